"""Rotary position embedding (rotate-half, as HF Llama/Qwen), with the static rope_scaling types of HF configs:
linear (position interpolation), llama3 (Llama 3.1) and yarn (NTK-by-parts plus an attention factor); and
dynamic NTK within max_position_embeddings, where it is plain RoPE (the decoder offers no position past it)."""

from __future__ import annotations

import math

import torch
from torch import nn

from flash_kernels.backends import cpu_pointwise

SUPPORTED_SCALING = ("default", "linear", "llama3", "yarn", "dynamic")


def rope_type(scaling: dict | None) -> str:
    """The rope_scaling type a config names (``rope_type``, or the older ``type``); "default" without one."""
    return (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))


def rope_parameters(head_dim: int, theta: float, scaling: dict | None) -> tuple[torch.Tensor, float]:
    """(inverse frequencies (head_dim // 2,) fp32, attention factor): the factor multiplies cos and sin (yarn's
    softmax temperature; 1 for the others). ``scaling``: config.json's rope_scaling, a yarn one with its
    ``original_max_position_embeddings`` resolved (:meth:`shard.models.llama.DecoderConfig.from_hf`).

    Raises:
        ValueError: a rope scaling type not in :data:`SUPPORTED_SCALING` (named in the message).
    """
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    kind = rope_type(scaling)
    if kind not in SUPPORTED_SCALING:
        # NOTE: longrope switches per-dimension factor lists by the sequence's length (Phi-3)
        raise ValueError(f"unsupported rope_scaling type {kind!r}; supported: {', '.join(SUPPORTED_SCALING)}")
    s = scaling or {}
    if kind == "linear":
        return (inv / s["factor"]).float(), 1.0
    if kind == "llama3":
        return _llama3_scale(inv, s).float(), 1.0
    if kind == "yarn":
        return _yarn_scale(inv, head_dim, theta, s).float(), _yarn_attention_factor(s)
    # NOTE: dynamic NTK changes the base only for a sequence longer than max_position_embeddings, and then at
    # every position of it (a cached prefix would stop matching a recompute), so positions stop there
    return inv.float(), 1.0


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


def _yarn_scale(inv: torch.Tensor, head_dim: int, theta: float, s: dict) -> torch.Tensor:
    """YaRN's NTK-by-parts: dimensions that turn more than ``beta_fast`` times over the original context keep
    their frequency, those turning fewer than ``beta_slow`` times are divided by ``factor``, a linear ramp
    between (the dimension bounds rounded outward unless ``truncate`` is false)."""
    original = s["original_max_position_embeddings"]

    def dimension(turns: float) -> float:  # the dimension whose wavelength fits ``turns`` times in the context
        return head_dim * math.log(original / (turns * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dimension(s.get("beta_fast") or 32), dimension(s.get("beta_slow") or 1)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    return inv / s["factor"] * ramp + inv * (1 - ramp)


def _yarn_attention_factor(s: dict) -> float:
    """``attention_factor`` if given, else 0.1 ln(factor) + 1 (a ratio of two such terms with ``mscale`` and
    ``mscale_all_dim``, as DeepSeek's configs give)."""
    if s.get("attention_factor") is not None:
        return float(s["attention_factor"])

    def mscale(weight: float) -> float:
        return 1.0 if s["factor"] <= 1 else 0.1 * weight * math.log(s["factor"]) + 1.0

    if s.get("mscale") and s.get("mscale_all_dim"):
        return mscale(s["mscale"]) / mscale(s["mscale_all_dim"])
    return mscale(1.0)


class Rotary(nn.Module):
    """Applies RoPE to q (n, h, d) and k (n, hk, d) at ``positions`` (n,) int64; cos/sin tables cached."""

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: dict | None = None) -> None:
        super().__init__()
        inv, attention_factor = rope_parameters(head_dim, theta, scaling)
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv)
        # NOTE: non-persistent buffers, so they follow .to(device) but are never expected in checkpoints.
        self.register_buffer("cos", freqs.cos() * attention_factor, persistent=False)
        self.register_buffer("sin", freqs.sin() * attention_factor, persistent=False)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if cpu_pointwise.usable(q):
            return self.rotate(positions, q), self.rotate(positions, k)
        cos = self.cos[positions].unsqueeze(1)  # (n, 1, d/2), gathered once for q and k
        sin = self.sin[positions].unsqueeze(1)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)

    def rotate(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """RoPE of x (n, heads, d) at ``positions`` (n,), e.g. q and k heads side by side in one call (on a
        CPU: one fused pass, :mod:`flash_kernels.backends.cpu_pointwise`, the same values per element whichever
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
