"""``prism-shard bench``'s proportional floor: its pair arithmetic, and the attention timing it rests on."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from shard import bench, cpu_affinity
from shard.layers import cpu_direct
from shard.factory import build_runner
from shard.tests.helpers import make_config


def test_pairs_count_causal_query_key_pairs() -> None:
    for new, context in ((1, 1), (3, 3), (2, 7), (5, 9)):
        brute = sum(1 for i in range(context - new, context) for j in range(context) if j <= i)
        assert bench.pairs(new, context) == brute


def test_the_floor_runs_from_the_token_ratio_to_the_pair_ratio() -> None:
    new = bench.CACHED_PROMPT - bench.CACHED_TOKENS  # 208 of 2,048
    tokens = new / bench.CACHED_PROMPT
    pair_ratio = bench.pairs(new, bench.CACHED_PROMPT) / bench.pairs(bench.CACHED_PROMPT, bench.CACHED_PROMPT)
    assert bench.proportional_floor(0.0) == pytest.approx(tokens)
    assert pair_ratio == pytest.approx(0.1928, abs=1e-4)
    assert bench.proportional_floor(1.0) == pytest.approx(pair_ratio)
    # an engine split 40 / 60 that scales exactly: 0.4 * pairs + 0.6 * tokens of its cold time
    assert bench.proportional_floor(0.4) == pytest.approx(0.4 * pair_ratio + 0.6 * tokens)


def test_cold_attention_share_times_the_prefill_calls_and_restores_the_backend(
    monkeypatch: pytest.MonkeyPatch, tiny_llama: Path
) -> None:
    monkeypatch.setenv(cpu_affinity.ENV, "0")  # else 2,048-token steps pin this process's thread to one CPU
    runner = build_runner(make_config(tiny_llama, num_blocks=bench.POOL_BLOCKS))
    backends = [layer.self_attn.backend for layer in runner.model.model.layers]
    rng, pool = random.Random(0), bench.BlockCounter()
    share = bench.cold_attention_share(runner, rng, runner.model.config.vocab_size, pool)
    assert 0.0 < share < 1.0
    assert [layer.self_attn.backend for layer in runner.model.model.layers] == backends
    assert cpu_direct.enabled()  # switched back on after the timed steps
