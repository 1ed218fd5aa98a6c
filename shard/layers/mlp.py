"""Gated SiLU MLP (Llama/Qwen): down(silu(gate(x)) * up(x))."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from flash_kernels.backends import cpu_pointwise
from shard.layers.fusion import fuse_linears
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
        self.gate_up_proj: nn.Linear | None = None  # set by fuse() after loading

    def fuse(self) -> None:
        """One gate/up matmul from now on (see :mod:`shard.layers.fusion`)."""
        self.gate_up_proj = fuse_linears([self.gate_proj, self.up_proj])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.down_proj(self._gated(x))
        return self.tp.all_reduce(out) if self.tp.enabled else out

    def _gated(self, x: torch.Tensor) -> torch.Tensor:
        """silu(gate(x)) * up(x): x (n, hidden) -> (n, intermediate / world)."""
        if self.gate_up_proj is not None:
            gate_up = self.gate_up_proj(x)
            if cpu_pointwise.usable(gate_up):  # on a CPU: one pass over the fused output, no views
                return cpu_pointwise.gated_silu(gate_up)
            gate, up = gate_up.chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        if cpu_pointwise.usable(gate):  # on a CPU: silu(gate) * up in one pass
            return cpu_pointwise.silu_mul(gate, up)
        return F.silu(gate) * up
