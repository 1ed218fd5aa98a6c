"""KV pool layout and sizing."""

from __future__ import annotations

import pytest
import torch

from shard.kv_cache import CPU_DEFAULT_TOKENS, KVCache, KVShape, choose_num_blocks

SHAPE = KVShape(layers=2, kv_heads=2, head_dim=16, dtype=torch.float32)
CPU = torch.device("cpu")


def test_layout_is_flash_kernels_paged_layout() -> None:
    kv = KVCache(SHAPE, num_blocks=5, block_size=16, device=CPU)
    assert len(kv.layers) == 2 and kv.capacity_tokens == 80
    assert all(t.shape == (5, 16, 2, 16) and t.dtype == torch.float32 for pair in kv.layers for t in pair)


def test_sizing_explicit_default_and_fraction() -> None:
    assert SHAPE.bytes_per_token == 2 * 2 * 2 * 16 * 4
    assert choose_num_blocks(SHAPE, 16, CPU, num_blocks=7) == 7
    assert choose_num_blocks(SHAPE, 16, CPU) == CPU_DEFAULT_TOKENS // 16
    assert choose_num_blocks(SHAPE, 16, CPU, memory_fraction=0.001) >= 2
    for bad in ({"num_blocks": 1}, {"memory_fraction": 1.5}):
        with pytest.raises(ValueError):
            choose_num_blocks(SHAPE, 16, CPU, **bad)
