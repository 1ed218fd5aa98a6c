"""Attention workloads: a paged pool with shuffled block tables, then prefill with part of each context
cached and decode at a large batch, timed per backend and converted to TFLOP/s and GB/s of KV read."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flash_kernels.api import AttentionBackend
from flash_kernels.bench.shapes import BenchShape
from flash_kernels.bench.timing import time_ms


@dataclass(frozen=True)
class Result:
    ms: float
    rate: float  # TFLOP/s for prefill, GB/s for decode


def paged_pool(
    shape: BenchShape, requests: int, block_size: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(key_cache, value_cache) each (nb, bs, hk, d) of random values, and block_tables (requests, mb) int32
    holding a random permutation of the blocks, so that reads are as scattered as in a long-running pool."""
    per_request = -(-shape.context // block_size)
    num_blocks = requests * per_request
    dims = (num_blocks, block_size, shape.kv_heads, shape.head_dim)
    key_cache = torch.randn(dims, device=device).to(dtype)
    value_cache = torch.randn(dims, device=device).to(dtype)
    tables = torch.randperm(num_blocks, device=device).view(requests, per_request).int()
    return key_cache, value_cache, tables


def cached_prefix(context: int, fraction: float, block_size: int) -> int:
    """Tokens of the context served from the cache: the fraction rounded down to whole blocks, since the
    prefix cache only ever matches full blocks."""
    return int(context * fraction) // block_size * block_size


def prefill_flops(heads: int, head_dim: int, prefix: int, new: int) -> int:
    """QK^T and PV of one request: 2 products x 2 flops x d per (head, query, visible key); the query at
    position p sees p + 1 keys."""
    visible = new * prefix + new * (new + 1) // 2
    return 4 * heads * head_dim * visible


def bench_prefill(
    backend: AttentionBackend,
    shape: BenchShape,
    block_size: int,
    fraction: float,
    dtype: torch.dtype,
    device: torch.device,
    warmup: int,
    iters: int,
) -> Result:
    pool = paged_pool(shape, shape.prefill_batch, block_size, dtype, device)
    args, flops = prefill_inputs(shape, pool, block_size, fraction, dtype, device)
    ms = time_ms(lambda: backend.prefill(*args), device, warmup, iters)
    return Result(ms, flops / (ms * 1e-3) / 1e12)


def prefill_inputs(
    shape: BenchShape,
    pool: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    block_size: int,
    fraction: float,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[tuple, int]:
    """``AttentionBackend.prefill``'s arguments for ``shape.prefill_batch`` requests over ``pool`` (from
    :func:`paged_pool`), each with ``fraction`` of its context cached, and the causal work in flops."""
    key_cache, value_cache, tables = pool
    prefix = cached_prefix(shape.context, fraction, block_size)
    new = shape.context - prefix
    b = shape.prefill_batch
    q = torch.randn(b * new, shape.heads, shape.head_dim, device=device).to(dtype)
    cu = torch.arange(0, (b + 1) * new, new, dtype=torch.int32, device=device)
    seqlens = torch.full((b,), shape.context, dtype=torch.int32, device=device)
    args = (q, key_cache, value_cache, tables, cu, seqlens, new, shape.context, shape.head_dim**-0.5)
    return args, b * prefill_flops(shape.heads, shape.head_dim, prefix, new)


def bench_decode(
    backend: AttentionBackend,
    shape: BenchShape,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    warmup: int,
    iters: int,
) -> Result:
    b = shape.decode_batch
    key_cache, value_cache, tables = paged_pool(shape, b, block_size, dtype, device)
    q = torch.randn(b, shape.heads, shape.head_dim, device=device).to(dtype)
    seqlens = torch.full((b,), shape.context, dtype=torch.int32, device=device)
    args = (q, key_cache, value_cache, tables, seqlens, shape.context, shape.head_dim**-0.5)
    ms = time_ms(lambda: backend.decode(*args), device, warmup, iters)
    kv_bytes = 2 * b * shape.context * shape.kv_heads * shape.head_dim * key_cache.element_size()
    return Result(ms, kv_bytes / (ms * 1e-3) / 1e9)
