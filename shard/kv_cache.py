"""The paged KV pool: per layer a key and a value tensor, each (num_blocks, block_size, kv_heads, head_dim),
the layout :mod:`flash_kernels.api` defines. Slot s is ``cache[s // block_size, s % block_size]``.

The router owns which blocks hold what; the pool only stores them. Sizing: an explicit block count, or a
fraction of free device memory (CUDA) / of physical memory (CPU), or on CPU by default enough for
``CPU_DEFAULT_TOKENS`` tokens (capped at ``CPU_DEFAULT_BYTES``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

CPU_DEFAULT_TOKENS = 32768
CPU_DEFAULT_BYTES = 2 << 30
CUDA_DEFAULT_FRACTION = 0.9


@dataclass(frozen=True)
class KVShape:
    layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_token(self) -> int:
        """K and V of one token over all layers."""
        return 2 * self.layers * self.kv_heads * self.head_dim * torch.finfo(self.dtype).bits // 8


def choose_num_blocks(
    shape: KVShape,
    block_size: int,
    device: torch.device,
    num_blocks: int | None = None,
    memory_fraction: float | None = None,
) -> int:
    """Pool size in blocks (>= 2: block 0 is reserved by the router for health probes).

    Raises:
        ValueError: a non-positive count/fraction, or memory too small for two blocks.
    """
    if num_blocks is not None:
        if num_blocks < 2:
            raise ValueError(f"--num-blocks must be at least 2, got {num_blocks}")
        return num_blocks
    per_block = shape.bytes_per_token * block_size
    if memory_fraction is None and device.type == "cpu":
        budget = min(CPU_DEFAULT_TOKENS * shape.bytes_per_token, CPU_DEFAULT_BYTES)
    else:
        fraction = CUDA_DEFAULT_FRACTION if memory_fraction is None else memory_fraction
        if not 0 < fraction <= 1:
            raise ValueError(f"--memory-fraction must be in (0, 1], got {fraction}")
        budget = int(_free_memory(device) * fraction)
    blocks = budget // per_block
    if blocks < 2:
        raise ValueError(f"memory budget {budget} bytes holds fewer than 2 KV blocks of {per_block} bytes")
    return blocks


def _free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


class KVCache:
    """Per-layer (key_cache, value_cache) pairs, each (num_blocks, block_size, kv_heads, head_dim)."""

    def __init__(self, shape: KVShape, num_blocks: int, block_size: int, device: torch.device) -> None:
        self.shape, self.num_blocks, self.block_size = shape, num_blocks, block_size
        dims = (num_blocks, block_size, shape.kv_heads, shape.head_dim)
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = [
            (
                torch.zeros(dims, dtype=shape.dtype, device=device),
                torch.zeros(dims, dtype=shape.dtype, device=device),
            )
            for _ in range(shape.layers)
        ]

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size
