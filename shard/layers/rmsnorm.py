"""RMSNorm as Llama/Qwen define it (normalise in fp32, scale in the input dtype)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from flash_kernels.backends import cpu_pointwise


class RMSNorm(nn.Module):
    """y = x / rms(x) * weight over the last dim; x (..., dim) any float dtype, returns x's dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._one_pass(x):
            return cpu_pointwise.rms_norm(x, self.weight, self.eps)
        # NOTE: F.rms_norm is x * rsqrt(mean(x^2) + eps), bit-identical to the spelled-out ops, in one call.
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)

    def add_norm(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A decoder layer's residual add and this norm: x, residual (n, dim) -> (norm(residual + x),
        residual + x). bf16 / fp32 on a CPU: one pass that writes the sum INTO ``residual`` (so it must be the caller's
        own running sum, read by nothing else) and returns it; otherwise the add makes a new tensor."""
        if (self._one_pass(x) and residual.dtype == x.dtype and x.is_contiguous()
                and residual.is_contiguous()):
            return cpu_pointwise.add_rms_norm(x, residual, self.weight, self.eps), residual
        total = residual + x
        return self(total), total

    def _one_pass(self, x: torch.Tensor) -> bool:
        """bf16 / fp32 rows (n, dim) on a CPU with weights of their dtype: the fused kernels take them."""
        return x.dim() == 2 and self.weight.dtype == x.dtype and cpu_pointwise.usable(x)
