"""Rotary position embedding (rotate-half, as HF Llama/Qwen), with optional Llama 3 frequency scaling."""

from __future__ import annotations

import math

import torch
from torch import nn

from flash_kernels.backends import cpu_pointwise


def inv_frequencies(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    """(head_dim // 2,) fp32 inverse frequencies; applies ``rope_type: llama3`` scaling when configured.

    Raises:
        ValueError: a rope scaling type other than llama3/default (named in the message).
    """
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return inv.float()
    if kind != "llama3":
        raise ValueError(f"unsupported rope_scaling type {kind!r}; supported: default, llama3")
    return _llama3_scale(inv, scaling).float()


def _llama3_scale(inv: torch.Tensor, s: dict) -> torch.Tensor:
    """Llama 3.1 scaling: long wavelengths divided by ``factor``, short ones kept, smooth blend between."""
    factor, low, high = s["factor"], s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv / factor + smooth * inv
    out = torch.where(wavelen > old_len / low, inv / factor, inv)
    medium = (wavelen <= old_len / low) & (wavelen >= old_len / high)
    return torch.where(medium, blended, out)


class Rotary(nn.Module):
    """Applies RoPE to q (n, h, d) and k (n, hk, d) at ``positions`` (n,) int64; cos/sin tables cached."""

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: dict | None = None) -> None:
        super().__init__()
        freqs = torch.outer(
            torch.arange(max_positions, dtype=torch.float32), inv_frequencies(head_dim, theta, scaling)
        )
        # NOTE: non-persistent buffers, so they follow .to(device) but are never expected in checkpoints.
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if cpu_pointwise.usable(q):
            return self.rotate(positions, q), self.rotate(positions, k)
        cos = self.cos[positions].unsqueeze(1)  # (n, 1, d/2), gathered once for q and k
        sin = self.sin[positions].unsqueeze(1)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)

    def rotate(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """RoPE of x (n, heads, d) at ``positions`` (n,), e.g. q and k heads side by side in one call (bf16 on
        a CPU: one fused pass, :mod:`flash_kernels.backends.cpu_pointwise`, the same values per element whichever
        heads are passed together)."""
        if cpu_pointwise.usable(x):
            return cpu_pointwise.rope(x, positions, *self.tables())
        return _rotate(x, self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1))

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (max_positions, d / 2) fp32, as the fused CPU ops take them. NOTE: the loader builds fp32
        tables; a module moved with .to(bf16) has bf16 ones, widened here (as _rotate widens them)."""
        if self.cos.dtype == torch.float32:
            return self.cos, self.sin
        return self.cos.float(), self.sin.float()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(x.dtype)
