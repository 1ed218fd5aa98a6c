"""KV pool layout and sizing."""

from __future__ import annotations

import os

import pytest
import torch

from shard import kv_cache
from shard.config import DEFAULT_PREFILL_TOKENS, ShardConfig, budget_floor_tokens
from shard.kv_cache import KVCache, KVShape, choose_num_blocks

SHAPE = KVShape(layers=2, kv_heads=2, head_dim=16, dtype=torch.float32)
CPU = torch.device("cpu")


def test_layout_is_flash_kernels_paged_layout() -> None:
    kv = KVCache(SHAPE, num_blocks=5, block_size=16, device=CPU)
    assert len(kv.layers) == 2 and kv.capacity_tokens == 80
    assert all(t.shape == (5, 16, 2, 16) and t.dtype == torch.float32 for pair in kv.layers for t in pair)


def test_sizing_explicit_default_and_fraction() -> None:
    assert SHAPE.bytes_per_token == 2 * 2 * 2 * 16 * 4
    assert choose_num_blocks(SHAPE, 16, CPU, num_blocks=7) == 7
    assert choose_num_blocks(SHAPE, 16, CPU, memory_fraction=0.001) >= 2
    for bad in ({"num_blocks": 1}, {"memory_fraction": 1.5}):
        with pytest.raises(ValueError):
            choose_num_blocks(SHAPE, 16, CPU, **bad)


def test_the_cpu_default_pool_takes_a_million_tokens_within_2_gib_and_an_eighth_of_free_memory(
    monkeypatch,
) -> None:
    """The default on CPU: CPU_DEFAULT_TOKENS tokens, but no more than CPU_DEFAULT_BYTES (a large model) nor
    1 / CPU_DEFAULT_SHARE of available memory (a small host)."""
    monkeypatch.setattr(kv_cache, "free_memory", lambda device: 64 << 30)
    assert choose_num_blocks(SHAPE, 16, CPU) == kv_cache.CPU_DEFAULT_TOKENS // 16 == (1 << 20) // 16
    big = KVShape(layers=32, kv_heads=8, head_dim=128, dtype=torch.bfloat16)  # 128 KiB per token
    assert choose_num_blocks(big, 16, CPU) == (2 << 30) // (big.bytes_per_token * 16)
    monkeypatch.setattr(kv_cache, "free_memory", lambda device: 1 << 30)
    assert choose_num_blocks(SHAPE, 16, CPU) == (1 << 30) // 8 // (SHAPE.bytes_per_token * 16)


def test_a_pool_sized_from_little_free_memory_is_refused_naming_the_flags(monkeypatch) -> None:
    """A busy host once gave the shard 35 blocks from free RAM; the router then refused its default limits at
    Warmup. Now the shard refuses such a pool at start and says which flag sizes it."""
    import shard.kv_cache as kv_cache

    per_block = SHAPE.bytes_per_token * 16
    floor = -(-DEFAULT_PREFILL_TOKENS // 16) + 1
    monkeypatch.setattr(kv_cache, "free_memory", lambda device: 35 * per_block)
    with pytest.raises(ValueError, match=r"holds 35 blocks.*--num-blocks.*--cuda-memory-fraction"):
        choose_num_blocks(SHAPE, 16, CPU, memory_fraction=1.0)
    monkeypatch.setattr(kv_cache, "free_memory", lambda device: floor * per_block)
    assert choose_num_blocks(SHAPE, 16, CPU, memory_fraction=1.0) == floor
    assert choose_num_blocks(SHAPE, 16, CPU, num_blocks=35) == 35  # explicit: taken as given


def test_the_floor_follows_the_routers_budgets(monkeypatch) -> None:
    """A small prefill budget makes a small pool legitimate; a max_total_tokens above the prefill budget
    raises the floor to one such request (+ block 0), and the refusal names the variable it came from."""
    import shard.kv_cache as kv_cache

    per_block = SHAPE.bytes_per_token * 16
    monkeypatch.setattr(kv_cache, "free_memory", lambda device: 35 * per_block)

    def blocks(**env: str) -> int:
        return choose_num_blocks(SHAPE, 16, CPU, memory_fraction=1.0, min_tokens=budget_floor_tokens(env))

    assert blocks(MAX_BATCH_PREFILL_TOKENS="512") == 35  # 512 tokens = 32 blocks + block 0
    with pytest.raises(ValueError, match=r"holds 35 blocks.*than the 36 \(545 tokens: MAX_TOTAL_TOKENS"):
        blocks(MAX_BATCH_PREFILL_TOKENS="512", MAX_TOTAL_TOKENS="545")  # 35 blocks + block 0
    assert blocks(MAX_BATCH_PREFILL_TOKENS="512", MAX_TOTAL_TOKENS="544") == 35
    assert budget_floor_tokens({}) == (4096, "the default max_batch_prefill_tokens 4096")
    assert budget_floor_tokens({"MAX_BATCH_PREFILL_TOKENS": "300", "MAX_TOTAL_TOKENS": "200"})[0] == 300
    with pytest.raises(ValueError, match="MAX_TOTAL_TOKENS must be a positive integer"):
        budget_floor_tokens({"MAX_TOTAL_TOKENS": "lots"})
    monkeypatch.setenv("MAX_TOTAL_TOKENS", "5000")  # the shard reads its environment once, into ShardConfig
    assert ShardConfig.env_pool_floor() == (5000, "MAX_TOTAL_TOKENS 5000")


def test_cpu_free_memory_counts_reclaimable_page_cache() -> None:
    import shard.kv_cache as kv_cache

    free = kv_cache.free_memory(CPU)
    assert free >= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") > 0
