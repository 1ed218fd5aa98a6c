"""Elementwise steps of a decoder layer, one pass each, bf16 or fp32 (``cpu_pointwise.cpp``, built with the CPU
attention kernels by :mod:`.cpu_decode`): RoPE, SiLU(gate) * up and RMSNorm, and fused forms of them (RoPE with
the KV store, SiLU * up of the fused gate/up output, the residual add with RMSNorm), used by ``shard.layers`` on
CPUs in place of several torch ops each (every op a pass over the rows, copies in between; on a small model's
decode step every op's fixed cost counts). Results equal the torch ops up to the order of fp32 operations.
``PRISM_CPU_POINTWISE=0`` turns them off; docs/performance.md has the numbers. :func:`greedy_rows` is the plain
greedy choice over fp32 logits (``shard.sampling_batch``) in one call.
"""

from __future__ import annotations

import os

import torch

from flash_kernels.backends import cpu_decode

ENV = "PRISM_CPU_POINTWISE"
DTYPES = (torch.bfloat16, torch.float32)


def usable(x: torch.Tensor) -> bool:
    """Whether the fused ops take ``x``: bf16 or fp32 on a CPU, the extension built, not switched off."""
    return x.dtype in DTYPES and x.device.type == "cpu" and _switched_on()


def _switched_on() -> bool:
    """Not switched off (read per call: tests and A/B scripts flip it) and the extension built."""
    return os.environ.get(ENV, "1") != "0" and cpu_decode.load()


def rope(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE: x (n, heads, d) bf16 or fp32 (last dim contiguous), positions (n,) int64, cos / sin
    (max_positions, d / 2) fp32 -> (n, heads, d) of x's dtype, new and contiguous."""
    out = torch.empty(x.shape, dtype=x.dtype)
    torch.ops.prism_kernels.rope(x if x.stride(2) == 1 else x.contiguous(), positions, cos, sin, out)
    return out


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up: gate, up (n, I) bf16 or fp32 (views of a fused gate/up output are fine) -> (n, I)."""
    gate, up = (t if t.stride(-1) == 1 else t.contiguous() for t in (gate, up))
    out = torch.empty(gate.shape, dtype=gate.dtype)
    torch.ops.prism_kernels.silu_mul(gate, up, out)
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * RMSNorm(x) over the last dim: x (n, H) bf16 or fp32, weight (H,) of its dtype -> (n, H)."""
    x = x.contiguous()
    out = torch.empty_like(x)
    torch.ops.prism_kernels.rms_norm(x, weight, eps, out)
    return out


def rope_store_kv(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slots: torch.Tensor,
) -> torch.Tensor:
    """RoPE of q and k and the KV store in one pass: qkv (n, h + 2 hk, d) bf16 or fp32, last dim contiguous (the
    fused q/k/v projection's output viewed per head), positions (n,) int64, cos / sin (max_positions, d / 2)
    fp32, caches (nb, bs, hk, d) of qkv's dtype, contiguous (:mod:`flash_kernels.api`'s pool layout), slots (n,)
    int64 distinct -> rotated q (n, h, d), new and contiguous; rotated k and v written to the caches at
    ``slots``. Equal to :func:`rope` then ``store_kv`` bit for bit."""
    return torch.ops.prism_kernels.rope_store_kv(qkv, positions, cos, sin, slots, key_cache, value_cache)


def store_usable(qkv: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor) -> bool:
    """Whether :func:`rope_store_kv` takes these: :func:`usable` for ``qkv``, both caches of its dtype on the
    CPU and contiguous."""
    return (usable(qkv) and key_cache.dtype == value_cache.dtype == qkv.dtype
            and key_cache.device.type == "cpu" and key_cache.is_contiguous() and value_cache.is_contiguous())


def gated_silu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of a fused gate/up output: gate_up (n, 2 I) bf16 or fp32 (gate first), last dim
    contiguous -> (n, I); equals :func:`silu_mul` of its halves."""
    return torch.ops.prism_kernels.gated_silu(gate_up)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The residual add and RMSNorm of a decoder layer in one pass: x, residual (n, H) bf16 or fp32 contiguous,
    weight (H,) of their dtype; ``residual`` becomes ``residual + x`` in place, returns :func:`rms_norm` of it
    (n, H). Equal to the add then :func:`rms_norm` bit for bit."""
    return torch.ops.prism_kernels.add_rms_norm(x, residual, weight, eps)


def greedy_usable(logits: torch.Tensor) -> bool:
    """Whether :func:`greedy_rows` takes ``logits``: (b, vocab) fp32 on a CPU, rows contiguous, the extension
    built, not switched off."""
    return (logits.dtype == torch.float32 and logits.device.type == "cpu" and logits.dim() == 2
            and logits.stride(1) == 1 and _switched_on())


def greedy_rows(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row the first index of the maximum and its log-probability (``log_softmax(row)[index]``), in one
    pass over the row: logits (b, vocab) fp32 -> tokens (b,) int64, logprobs (b,) fp32; NaN where the row has
    NaN or +inf, or only -inf (as ``log_softmax`` there)."""
    tokens = torch.empty(logits.shape[0], dtype=torch.int64)
    logprobs = torch.empty(logits.shape[0], dtype=torch.float32)
    torch.ops.prism_kernels.greedy_rows_f32(logits, tokens, logprobs)
    return tokens, logprobs
