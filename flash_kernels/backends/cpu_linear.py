"""bf16 linears of up to a few hundred rows on Intel AMX tiles (``cpu_linear.cpp``, built with the decode
kernel by :mod:`.cpu_decode`): a decode step's products without oneDNN's per-call set-up, which costs more
than the product at these sizes (docs/performance.md). The weight is packed once (:func:`pack`); a call is one
loop over it. ``PRISM_CPU_AMX_LINEAR=0`` turns it off (then :mod:`shard.layers.packed_linear` prepacks for
oneDNN).
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch
from torch.nn import functional as F

from flash_kernels.backends import cpu_decode

ENV = "PRISM_CPU_AMX_LINEAR"
BLOCK, DEPTH = 32, 32  # output columns per packed block, depth (input features) per chunk


def usable() -> bool:
    """Whether :func:`linear` runs here: not switched off, the extension built with AMX, the OS grants
    tiles."""
    return os.environ.get(ENV, "1") != "0" and _built()


@lru_cache(maxsize=1)
def _built() -> bool:
    return cpu_decode.load() and bool(torch.ops.prism_kernels.amx_linear_usable())


def pack(weight: torch.Tensor) -> torch.Tensor:
    """weight (n, k) bf16 -> (ceil(n / 32), ceil(k / 32), 2, 16, 32) bf16, zero-padded: block b, depth chunk
    c, tile t, row r holds (w[j, 32c + 2r], w[j, 32c + 2r + 1]) for the 16 columns j = 32b + 16t + 0..15."""
    n, k = weight.shape
    nb, kc = -(-n // BLOCK), -(-k // DEPTH)
    padded = F.pad(weight.detach(), (0, kc * DEPTH - k, 0, nb * BLOCK - n))
    # (block, tile, column, chunk, row, pair) -> (block, chunk, tile, row, column, pair)
    tiles = padded.view(nb, 2, 16, kc, 16, 2).permute(0, 3, 1, 4, 2, 5)
    return tiles.reshape(nb, kc, 2, 16, 2 * 16).contiguous()


def linear(x: torch.Tensor, packed: torch.Tensor, out_features: int, bias: torch.Tensor | None
           ) -> torch.Tensor:
    """x (m, k) bf16, packed = :func:`pack` of the (out_features, k) weight, bias (out_features,) bf16 or
    None -> (m, out_features) bf16: x @ weight.T + bias, fp32 sums rounded once (only where
    :func:`usable`)."""
    return torch.ops.prism_kernels.amx_linear(x.contiguous(), packed, out_features, bias)
