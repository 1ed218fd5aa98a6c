"""Gated SiLU MLP (Llama/Qwen): down(silu(gate(x)) * up(x))."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from shard.tensor_parallel import SINGLE, TensorParallel


class GatedMLP(nn.Module):
    """x (n, hidden) -> (n, hidden). Parameter names match HF (gate_proj, up_proj, down_proj).

    Under tensor parallelism this rank holds intermediate/world columns: gate/up column-parallel, down
    row-parallel, one all-reduce of the output.

    Raises:
        ValueError: a bias with tensor parallelism (a row-parallel bias would be summed world times).
    """

    def __init__(
        self, hidden: int, intermediate: int, bias: bool = False, tp: TensorParallel = SINGLE
    ) -> None:
        super().__init__()
        if bias and tp.enabled:
            raise ValueError("tensor parallelism does not support MLP biases")
        part = intermediate // tp.world
        self.tp = tp
        self.gate_proj = nn.Linear(hidden, part, bias=bias)
        self.up_proj = nn.Linear(hidden, part, bias=bias)
        self.down_proj = nn.Linear(part, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.tp.all_reduce(out) if self.tp.enabled else out
