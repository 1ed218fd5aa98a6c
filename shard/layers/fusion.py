"""Projections fused at load time: q/k/v into one linear, gate/up into one, so a layer runs 2 matmuls fewer
per step, fewer ops in all (a small model's decode step is mostly per-op overhead: docs/performance.md).

The fused weight is the parts' weights side by side; the parts keep their HF names and become views into it
(no extra memory, ``state_dict`` unchanged; the fused module holds it as a non-persistent buffer). Outputs are
bit-identical to the separate matmuls (checked for fp32 and bf16 in shard/tests/test_fusion.py).
"""

from __future__ import annotations

import torch
from torch import nn


def fuse_linears(parts: list[nn.Linear]) -> nn.Linear:
    """One linear computing ``cat([p(x) for p in parts], -1)``; each part is flagged ``fused`` (it is not
    called any more, so :func:`shard.layers.packed_linear.pack_cpu_linears` skips it)."""
    weight = torch.cat([p.weight.detach() for p in parts])
    has_bias = parts[0].bias is not None
    bias = torch.cat([p.bias.detach() for p in parts]) if has_bias else None
    fused = nn.Linear(parts[0].in_features, weight.shape[0], bias=False, device="meta")
    del fused.weight, fused.bias
    fused.register_buffer("weight", weight, persistent=False)
    fused.register_buffer("bias", bias, persistent=False)
    start = 0
    for p in parts:
        end = start + p.out_features
        p.weight = nn.Parameter(weight[start:end], requires_grad=False)
        if has_bias:
            p.bias = nn.Parameter(bias[start:end], requires_grad=False)
        p.fused = True
        start = end
    return fused


def fuse_projections(model: nn.Module) -> int:
    """Call ``fuse()`` on every module of ``model`` that has one (attention, MLP); how many fused."""
    fusable = [m for m in model.modules() if hasattr(m, "fuse")]
    for m in fusable:
        m.fuse()
    return len(fusable)
