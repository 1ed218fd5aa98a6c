"""CUDA graphs for decode steps: capture once per batch size of a ladder, pad each batch up to the nearest
captured size, replay. The only file in the shard that names CUDA graphs; the model's forward never knows.

Padding rows must be harmless to run through the whole model, including ``store_kv``:

    row            input_id  position  slot        block_tables row   seqlens_k
    real i < b     given     given     given       given (+ block 0)  given
    padding i >= b 0         0         PAD_SLOT=0  all block 0        1

``PAD_SLOT`` is slot 0 of block 0, which the router never hands to a request (it reserves block 0 for the
health probe, as TGI does; ``shard.kv_cache`` keeps the pool at >= 2 blocks for that reason). Padding rows
store their K/V there and attend only to it, so they never touch a live request's cache and always read a
finite value that a padding row of the same layer has just written.

The forward is ``forward(input_ids (b,) int64, positions (b,) int64, slots (b,) int64,
block_tables (b, mb) int32, seqlens_k (b,) int32) -> logits (b, vocab)``. Everything it does on the device
must be capturable: in particular its attention must not read host ints derived from the batch (the Triton and
flash-attn decode paths read lengths from ``seqlens_k`` only; the reference backend syncs and cannot be used).

``torch.cuda`` is only touched inside methods, so this module imports and its helpers run on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torch.cuda import CUDAGraph

PAD_SLOT = 0
PAD_BLOCK = 0

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def batch_size_ladder(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, 16, 32, then every multiple of 32 up to ``max_batch_size`` (included, even when it is not
    on the ladder). Powers of two keep small batches cheap; past 32, steps of 32 cap the padding waste at
    31 rows while keeping the number of graphs (and capture time) linear in the max batch."""
    if max_batch_size < 1:
        raise ValueError(f"max batch size must be >= 1, got {max_batch_size}")
    sizes = [s for s in (1, 2, 4, 8, 16) if s < max_batch_size]
    sizes += range(32, max_batch_size, 32)
    return [*sizes, max_batch_size]


def padded_batch_size(batch_size: int, captured: Sequence[int]) -> int | None:
    """Smallest captured size >= ``batch_size`` (``captured`` ascending), or None when it is too large."""
    return next((size for size in captured if size >= batch_size), None)


@dataclass
class StaticInputs:
    """The graph's input buffers, sized for the largest captured batch; graphs of smaller sizes read their
    first rows. input_ids, positions, slots: (B,) int64; block_tables: (B, mb) int32; seqlens_k: (B,)
    int32."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    slots: torch.Tensor
    block_tables: torch.Tensor
    seqlens_k: torch.Tensor

    @classmethod
    def allocate(cls, max_batch: int, max_blocks: int, device: torch.device | str) -> StaticInputs:
        """Buffers holding padding rows only (what capture runs on)."""
        return cls(
            input_ids=torch.zeros(max_batch, dtype=torch.int64, device=device),
            positions=torch.zeros(max_batch, dtype=torch.int64, device=device),
            slots=torch.full((max_batch,), PAD_SLOT, dtype=torch.int64, device=device),
            block_tables=torch.full((max_batch, max_blocks), PAD_BLOCK, dtype=torch.int32, device=device),
            seqlens_k=torch.ones(max_batch, dtype=torch.int32, device=device),
        )

    def rows(self, size: int) -> tuple[torch.Tensor, ...]:
        """The forward's arguments for a batch of ``size`` rows (views, so a graph keeps reading them)."""
        return (
            self.input_ids[:size],
            self.positions[:size],
            self.slots[:size],
            self.block_tables[:size],
            self.seqlens_k[:size],
        )

    def load(
        self,
        size: int,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        block_tables: torch.Tensor,
        seqlens_k: torch.Tensor,
    ) -> None:
        """Copy a batch of b <= size rows in (device to device, no sync) and turn rows b..size-1 into padding
        rows (see the module's table). ``block_tables`` may be narrower than the buffer: the remaining
        columns become block 0, a valid id that attention never reads."""
        b, width = block_tables.shape
        self.input_ids[:b].copy_(input_ids)
        self.positions[:b].copy_(positions)
        self.slots[:b].copy_(slots)
        self.block_tables[:b, :width].copy_(block_tables)
        self.block_tables[:b, width:].fill_(PAD_BLOCK)
        self.seqlens_k[:b].copy_(seqlens_k)
        self.input_ids[b:size].zero_()
        self.positions[b:size].zero_()
        self.slots[b:size].fill_(PAD_SLOT)
        self.block_tables[b:size].fill_(PAD_BLOCK)
        self.seqlens_k[b:size].fill_(1)


class CudaGraphRunner:
    """Replays captured decode graphs; falls back to the eager forward when no graph fits.

    Args:
        forward: the model's decode step (signature in the module docstring); must be capturable.
        batch_sizes: sizes to capture (e.g. :func:`batch_size_ladder`).
        max_blocks: block-table width of the static buffer; batches with wider tables run eagerly.
        device: the CUDA device the model lives on.
    """

    def __init__(
        self, forward: Forward, batch_sizes: Sequence[int], max_blocks: int, device: torch.device | str
    ) -> None:
        if not batch_sizes or min(batch_sizes) < 1:
            raise ValueError(f"batch sizes must be positive, got {list(batch_sizes)}")
        self.forward = forward
        self.batch_sizes = sorted(set(batch_sizes))
        self.max_blocks = max_blocks
        self.device = torch.device(device)
        self._inputs: StaticInputs | None = None
        self._graphs: dict[int, CUDAGraph] = {}
        self._outputs: dict[int, torch.Tensor] = {}

    @property
    def captured(self) -> bool:
        return bool(self._graphs)

    def capture(self) -> None:
        """Capture one graph per batch size, largest first, all in one memory pool: the largest graph sizes
        the pool and the smaller ones reuse its blocks. Runs each size once eagerly first (on a side stream,
        as torch requires) so lazy initialisation and kernel compilation happen outside the capture."""
        inputs = StaticInputs.allocate(self.batch_sizes[-1], self.max_blocks, self.device)
        pool = None
        for size in reversed(self.batch_sizes):
            self._warm_up(inputs.rows(size))
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._outputs[size] = self.forward(*inputs.rows(size))
            pool = graph.pool() if pool is None else pool
            self._graphs[size] = graph
        torch.cuda.synchronize(self.device)
        self._inputs = inputs

    def _warm_up(self, args: tuple[torch.Tensor, ...]) -> None:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self.forward(*args)
        torch.cuda.current_stream(self.device).wait_stream(stream)

    def __call__(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        block_tables: torch.Tensor,
        seqlens_k: torch.Tensor,
    ) -> torch.Tensor:
        """One decode step: (b,) inputs as in the forward -> logits (b, vocab).

        A replayed result is a view of the graph's output buffer: it is valid until the next call (consume or
        copy it before then). Before :meth:`capture`, or for a batch larger than the ladder or a table wider
        than ``max_blocks``, the forward runs eagerly.
        """
        size = padded_batch_size(input_ids.shape[0], self.batch_sizes)
        if self._inputs is None or size is None or block_tables.shape[1] > self.max_blocks:
            return self.forward(input_ids, positions, slots, block_tables, seqlens_k)
        self._inputs.load(size, input_ids, positions, slots, block_tables, seqlens_k)
        self._graphs[size].replay()
        return self._outputs[size][: input_ids.shape[0]]
