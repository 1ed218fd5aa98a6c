"""The host-memory tier: ``num_blocks`` KV blocks in one CPU tensor, pinned when the device is CUDA (so that
host-to-device loads are asynchronous DMA)."""

from __future__ import annotations

import torch


class HostPool:
    """``data[slot]`` is one block: (layers, 2, block_size, kv_heads, head_dim), K then V."""

    def __init__(self, num_blocks: int, block_shape: tuple[int, ...], dtype: torch.dtype, pin: bool) -> None:
        self.num_blocks = num_blocks
        # NOTE: empty, not zeros: a slot is read only after the router had it written.
        self.data = torch.empty((num_blocks, *block_shape), dtype=dtype, pin_memory=pin)

    def read(self, slot: int) -> torch.Tensor:
        """A view of the slot (valid until the slot is written again)."""
        return self.data[slot]

    def write(self, slot: int, block: torch.Tensor) -> None:
        self.data[slot].copy_(block)
