"""A random-weight decoder with Qwen3-4B's sizes (36 x (attention + SwiGLU MLP), hidden 2560, 32/8 heads of
128, intermediate 9728, vocab 151936) for timing one decode step, eagerly and replayed from a CUDA graph.

It is a stand-in, not the shard's model: no rotary embedding or q/k norm (element-wise work, a few percent of
the step), and it calls the attention backend directly. Graph capture is done here with ``torch.cuda.graph``
on one fixed batch because flash_kernels may not import the shard; the shard's ``CudaGraphRunner`` adds the
batch-size ladder and padding around the same mechanism.
"""

from __future__ import annotations

import dataclasses

import torch

from flash_kernels.api import AttentionBackend
from flash_kernels.bench.attention import paged_pool
from flash_kernels.bench.shapes import BenchShape
from flash_kernels.bench.timing import time_ms


class StandInDecoder:
    """Weights (random, scaled to keep activations finite) and a per-layer paged KV pool for ``batch``
    requests of ``shape.e2e_context`` tokens. ``step(ids (b,) int64, slots (b,) int64, block_tables (b, mb)
    int32, seqlens_k (b,) int32) -> logits (b, vocab)``."""

    def __init__(
        self,
        shape: BenchShape,
        backend: AttentionBackend,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.shape, self.backend = shape, backend
        q_dim, kv_dim = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim

        def weight(rows: int, cols: int) -> torch.Tensor:
            return (torch.randn(rows, cols, device=device) * rows**-0.5).to(dtype)

        self.embed = weight(shape.vocab, shape.hidden)
        self.lm_head = weight(shape.hidden, shape.vocab)
        self.layers = [
            (
                weight(shape.hidden, q_dim + 2 * kv_dim),
                weight(q_dim, shape.hidden),
                weight(shape.hidden, 2 * shape.intermediate),
                weight(shape.intermediate, shape.hidden),
            )
            for _ in range(shape.layers)
        ]
        pool_shape = dataclasses.replace(shape, context=shape.e2e_context)
        self.caches = [
            paged_pool(pool_shape, shape.decode_batch, block_size, dtype, device)[:2]
            for _ in range(shape.layers)
        ]

    def step(
        self, ids: torch.Tensor, slots: torch.Tensor, tables: torch.Tensor, seqlens: torch.Tensor
    ) -> torch.Tensor:
        s = self.shape
        x = self.embed[ids]
        for (qkv_w, o_w, up_w, down_w), (key_cache, value_cache) in zip(self.layers, self.caches):
            qkv = _rms(x) @ qkv_w
            q, k, v = qkv.split([s.heads * s.head_dim, s.kv_heads * s.head_dim, s.kv_heads * s.head_dim], -1)
            k, v = k.view(-1, s.kv_heads, s.head_dim), v.view(-1, s.kv_heads, s.head_dim)
            self.backend.store_kv(key_cache, value_cache, k, v, slots)
            attn = self.backend.decode(
                q.view(-1, s.heads, s.head_dim),
                key_cache,
                value_cache,
                tables,
                seqlens,
                s.e2e_context,
                s.head_dim**-0.5,
            )
            x = x + attn.flatten(1) @ o_w
            gate, up = (_rms(x) @ up_w).chunk(2, -1)
            x = x + (torch.nn.functional.silu(gate) * up) @ down_w
        return _rms(x) @ self.lm_head


def _rms(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm without a gain (the gain is a per-channel multiply the timing does not need)."""
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype)


def decode_inputs(shape: BenchShape, block_size: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """ids, slots, block_tables, seqlens_k for every request at its last position; tables as in the pool."""
    b, context = shape.decode_batch, shape.e2e_context
    per_request = -(-context // block_size)
    tables = torch.arange(b * per_request, device=device).view(b, per_request).int()
    last = context - 1
    slots = tables[:, last // block_size].long() * block_size + last % block_size
    ids = torch.randint(0, shape.vocab, (b,), device=device)
    seqlens = torch.full((b,), context, dtype=torch.int32, device=device)
    return ids, slots, tables, seqlens


def time_decode_step(
    model: StandInDecoder, inputs: tuple[torch.Tensor, ...], device: torch.device, warmup: int, iters: int
) -> tuple[float, float | None]:
    """(eager ms, graph-replay ms); the second is None off CUDA."""
    eager = time_ms(lambda: model.step(*inputs), device, warmup, iters)
    if device.type != "cuda":
        return eager, None
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        model.step(*inputs)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model.step(*inputs)
    return eager, time_ms(graph.replay, device, warmup, iters)
