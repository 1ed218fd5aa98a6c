"""The paged KV pool: per layer a key and a value tensor, each (num_blocks, block_size, kv_heads, head_dim),
the layout :mod:`flash_kernels.api` defines. Slot s is ``cache[s // block_size, s % block_size]``.

The router owns which blocks hold what; the pool only stores them. Sizing: an explicit block count, or a
fraction of free device memory (CUDA) / of available memory (CPU), or on CPU by default enough for
``CPU_DEFAULT_TOKENS`` tokens, capped at ``CPU_DEFAULT_BYTES`` and at ``1 / CPU_DEFAULT_SHARE`` of available
memory (room for many concurrent long requests and retained prefixes; docs/performance.md, "The CPU's default KV
pool"). A pool sized from memory must hold what the router's budgets need
(:func:`shard.config.budget_floor_tokens`: its prefill budget, and ``max_total_tokens`` when set): a smaller one
(a busy host with little free RAM) would start, then make the router refuse its limits at Warmup with no hint of
the shard's flag, so the shard refuses it at once and names the flags. An explicit
``--num-blocks`` is taken as given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from shard.config import budget_floor_tokens

CPU_DEFAULT_TOKENS = 1 << 20
CPU_DEFAULT_BYTES = 2 << 30
CPU_DEFAULT_SHARE = 8
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
    min_tokens: tuple[int, str] | None = None,
) -> int:
    """Pool size in blocks (>= 2: block 0 is reserved by the router for health probes).

    Args:
        min_tokens: (usable tokens a pool sized from memory must hold, why), from
            :func:`shard.config.budget_floor_tokens`; default the router's default prefill budget.

    Raises:
        ValueError: a count under 2, a fraction outside (0, 1], or a pool sized from memory holding fewer than
            ``min_tokens`` usable tokens (the message names --num-blocks / --memory-fraction).
    """
    if num_blocks is not None:
        if num_blocks < 2:
            raise ValueError(f"--num-blocks must be at least 2, got {num_blocks}")
        return num_blocks
    per_block = shape.bytes_per_token * block_size
    if memory_fraction is None and device.type == "cpu":
        budget = min(CPU_DEFAULT_TOKENS * shape.bytes_per_token, CPU_DEFAULT_BYTES,
                     free_memory(device) // CPU_DEFAULT_SHARE)
        how = f"the CPU default of {budget} bytes"
    else:
        fraction = CUDA_DEFAULT_FRACTION if memory_fraction is None else memory_fraction
        if not 0 < fraction <= 1:
            raise ValueError(f"--memory-fraction must be in (0, 1], got {fraction}")
        free = free_memory(device)
        budget = int(free * fraction)
        how = f"{fraction:g} of {free} bytes of free {device.type} memory"
    blocks = budget // per_block
    need, why = min_tokens if min_tokens is not None else budget_floor_tokens({})
    floor = -(-need // block_size) + 1  # + block 0, the router's
    if blocks < floor:
        raise ValueError(
            f"the KV pool sized from memory ({how}) holds {blocks} blocks of {block_size} tokens, fewer "
            f"than the {floor} ({need} tokens: {why}; + block 0) the router's limits need; set "
            f"the pool size with --num-blocks N (launcher: --num-blocks, NUM_BLOCKS) or a larger "
            f"--memory-fraction (launcher: --cuda-memory-fraction), lower those limits, or free memory"
        )
    return blocks


def free_memory(device: torch.device) -> int:
    """Bytes free for the pool: CUDA's free memory; on CPU MemAvailable (free RAM plus reclaimable page cache;
    MemFree alone is near 0 on a busy host whose page cache holds the rest)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
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
