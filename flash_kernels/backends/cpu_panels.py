"""fp32 linears of up to about a thousand rows on AVX2 + FMA (``cpu_panels.cpp``, built with the decode kernel by
:mod:`.cpu_decode`), the weight packed once into panels of 16 output columns (:func:`pack`): a decode step's
products without the weight copy MKL's sgemm makes on every call (docs/performance.md). A row's result does
not depend on the other rows of the call. ``PRISM_CPU_PANEL_LINEAR=0`` turns it off (then fp32 linears run
``F.linear``).
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch
from torch.nn import functional as F

from flash_kernels.backends import cpu_decode

ENV = "PRISM_CPU_PANEL_LINEAR"
COLUMNS = 16  # output columns per panel


def usable() -> bool:
    """Whether :func:`linear` runs here: not switched off, the extension built for AVX2 + FMA."""
    return os.environ.get(ENV, "1") != "0" and _built()


@lru_cache(maxsize=1)
def _built() -> bool:
    return cpu_decode.load() and bool(torch.ops.prism_kernels.panel_linear_usable())


def pack(weight: torch.Tensor, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (n, k) fp32, bias (n,) fp32 or None -> panels (ceil(n / 16), k, 16) fp32, panel p's row i holding
    weight[16p + c, i] for c = 0..15, zero past n; and the bias zero-padded to (16 ceil(n / 16),) (empty for
    None)."""
    n, k = weight.shape
    count = -(-n // COLUMNS)
    padded = F.pad(weight.detach(), (0, 0, 0, count * COLUMNS - n))
    panels = padded.view(count, COLUMNS, k).transpose(1, 2).contiguous()
    padded_bias = torch.empty(0) if bias is None else F.pad(bias.detach(), (0, count * COLUMNS - n))
    return panels, padded_bias.contiguous()


def linear(x: torch.Tensor, panels: torch.Tensor, out_features: int, bias: torch.Tensor) -> torch.Tensor:
    """x (m, k) fp32 (rows contiguous), panels and bias as :func:`pack` made them -> (m, out_features) fp32:
    x @ weight.T + bias, each element's products summed over k in order (only where :func:`usable`)."""
    out = torch.empty(x.shape[0], out_features)
    torch.ops.prism_kernels.panel_linear(x if x.stride(-1) == 1 else x.contiguous(), panels, bias, out)
    return out
