"""fp32 linears on CPU with their weights packed once into column panels (``flash_kernels.backends.cpu_panels``,
AVX2 + FMA).

``F.linear`` on fp32 CPU tensors calls MKL's sgemm, which copies a block of the weight into its own order on
every call: at a decode step's 32 rows a fifth of the sgemm time, and its second thread gains less there
(docs/performance.md). :class:`PanelLinear` runs up to ``PANEL_MAX_ROWS`` rows on a copy packed at load; more
rows (long prompts) run ``F.linear``, where the copy is a small share. Each output element is summed over the
input features in order, whatever the row count, so a row's result does not depend on the rows beside it; the
order differs from MKL's, so results differ from ``F.linear`` in the last bits (checked at pack time to be
within fp32 rounding of the product). Cost: the packed copy is held beside the original weight (kept for
``state_dict``, tied embeddings and the prompt rows), so the linears' memory doubles; packing is skipped
(logged) when that copy would take more than a quarter of the host's available memory.
``PRISM_PACK_LINEARS=0`` or ``PRISM_CPU_PANEL_LINEAR=0`` turns it off.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn import functional as F

from flash_kernels.backends import cpu_panels
from shard.layers.packed_linear import packable

log = logging.getLogger(__name__)
# NOTE: up to here the panels beat or match F.linear (MKL) on 1 and 2 threads, on the peer model's shapes and a
# 1B-class layer's (docs/performance.md, sessions 35-36); at 2,048 rows MKL was faster on the peer model's
PANEL_MAX_ROWS = 1024


class PanelLinear(nn.Linear):
    """An ``nn.Linear`` (same parameters, same state_dict) whose forward runs up to ``PANEL_MAX_ROWS`` rows on
    ``panels`` and ``panel_bias``, non-persistent buffers of :func:`cpu_panels.pack`."""

    panels: torch.Tensor
    panel_bias: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) fp32 -> (..., out); the leading dims are flattened into rows."""
        rows = x.numel() // x.shape[-1]
        if rows > PANEL_MAX_ROWS:
            return F.linear(x, self.weight, self.bias)
        out = cpu_panels.linear(x.reshape(rows, x.shape[-1]), self.panels, self.out_features, self.panel_bias)
        return out.view(*x.shape[:-1], self.out_features)


def pack_panel_linears(model: nn.Module, available_bytes: int | None = None) -> int:
    """Turn every fp32 CPU ``nn.Linear`` of ``model`` into a :class:`PanelLinear`, in place; how many were
    packed (0 when off, when the kernel is not built here, when its result is not within fp32 rounding of the
    product, or when the copies would exceed a quarter of ``available_bytes``, default the host's available
    memory)."""
    linears = packable(model, torch.float32, available_bytes) if cpu_panels.usable() else []
    for m in linears:
        panels, bias = cpu_panels.pack(m.weight, m.bias)
        if m is linears[0] and not _panels_are_close(m, panels, bias):
            return 0
        m.register_buffer("panels", panels, persistent=False)
        m.register_buffer("panel_bias", bias, persistent=False)
        m.__class__ = PanelLinear
    if linears:
        log.info("%d fp32 linears packed into panels (%s=0 turns it off)", len(linears), cpu_panels.ENV)
    return len(linears)


def _panels_are_close(m: nn.Linear, panels: torch.Tensor, bias: torch.Tensor) -> bool:
    """Whether the panel kernel's result is within fp32 rounding of the float64 product here (it sums in
    another order than MKL; anything more is a broken build or CPU)."""
    for rows in (1, 33):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(rows, m.in_features, generator=gen)
        exact = F.linear(x.double(), m.weight.double(), None if m.bias is None else m.bias.double())
        got = cpu_panels.linear(x, panels, m.out_features, bias).double()
        bound = (x.double().abs() @ m.weight.double().abs().T + 1) * 2**-16
        if not bool(((got - exact).abs() <= bound).all()):
            log.warning("fp32 panel linears differ from the product here; not packing")
            return False
    return True
