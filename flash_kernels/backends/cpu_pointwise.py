"""bf16 elementwise steps of a decoder layer, one pass each (``cpu_pointwise.cpp``, built with the CPU attention
kernels by :mod:`.cpu_decode`): RoPE, SiLU(gate) * up and RMSNorm, used by ``shard.layers`` for bf16 on CPUs in
place of several torch ops each (every op a pass over the rows, fp32 copies in between). Results equal the torch
ops up to the order of fp32 operations. ``PRISM_CPU_POINTWISE=0`` turns them off; docs/performance.md has the
numbers. :func:`greedy_rows` is the plain greedy choice over fp32 logits (``shard.sampling_batch``) in one
call.
"""

from __future__ import annotations

import os

import torch

from flash_kernels.backends import cpu_decode

ENV = "PRISM_CPU_POINTWISE"


def usable(x: torch.Tensor) -> bool:
    """Whether the fused ops take ``x``: bf16 on a CPU, the extension built, not switched off."""
    return x.dtype == torch.bfloat16 and x.device.type == "cpu" and _switched_on()


def _switched_on() -> bool:
    """Not switched off (read per call: tests and A/B scripts flip it) and the extension built."""
    return os.environ.get(ENV, "1") != "0" and cpu_decode.load()


def rope(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE: x (n, heads, d) bf16 (last dim contiguous), positions (n,) int64, cos / sin
    (max_positions, d / 2) fp32 -> (n, heads, d) bf16, new and contiguous."""
    out = torch.empty(x.shape, dtype=x.dtype)
    torch.ops.prism_kernels.rope_bf16(x if x.stride(2) == 1 else x.contiguous(), positions, cos, sin, out)
    return out


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up: gate, up (n, I) bf16 (views of a fused gate/up output are fine) -> (n, I)."""
    gate, up = (t if t.stride(-1) == 1 else t.contiguous() for t in (gate, up))
    out = torch.empty(gate.shape, dtype=gate.dtype)
    torch.ops.prism_kernels.silu_mul_bf16(gate, up, out)
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * RMSNorm(x) over the last dim: x (n, H) bf16, weight (H,) bf16 -> (n, H)."""
    x = x.contiguous()
    out = torch.empty_like(x)
    torch.ops.prism_kernels.rms_norm_bf16(x, weight, eps, out)
    return out


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
