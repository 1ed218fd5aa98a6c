"""KV tiers in the replay (flags, hit rate by tier) and the simulator (bandwidth cost, overlap, prefetch)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bench.compare import SimSetup, simulate_point
from bench.cost_model import make_cost_model
from bench.replay import main
from bench.simulator import SimConfig
from bench.tier_timing import TierClock, TierTiming
from bench.tests.test_replay import _trace
from bench.workloads import WorkloadSpec, build, timed
from bench.workloads.zipf_rag import ZipfRagParams
from prism_cache.tiers import BlockCopy, Tier, TierConfig


def _replay(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    args = [str(path), "--capacity-tokens", "4096", "--block-size", "64", "--window", "4", "--json", *extra]
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


def test_replay_counts_hits_from_every_tier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _trace(tmp_path)
    device_only = _replay(path, capsys)
    assert "hit_rate_by_tier" not in device_only
    for policy in ("dart", "hotprefix", "lru-offload"):
        tiered = _replay(path, capsys, "--host-capacity-tokens", "8192", "--disk-capacity-tokens", "16384",
                         "--tier-policy", policy)
        by_tier = tiered["hit_rate_by_tier"]
        assert set(by_tier) == {"device", "host", "disk"}
        assert sum(by_tier.values()) == pytest.approx(tiered["hit_rate"])
        assert tiered["belady_hit_rate"] >= tiered["hit_rate"]
        if policy != "hotprefix":  # hotprefix keeps only blocks used twice
            assert tiered["hit_rate"] > device_only["hit_rate"], policy
            assert by_tier["host"] + by_tier["disk"] > 0


def test_overlap_hides_loads_under_compute() -> None:
    timing = TierTiming(block_bytes=1 << 20, layers=32)
    assert timing.step(1.0, 0.5) == pytest.approx(1.0 + 0.5 / 32)
    assert replace(timing, overlap=False).step(1.0, 0.5) == 1.5
    clock = TierClock(timing)
    host = [BlockCopy(Tier.HOST, s, Tier.DEVICE, s, 1) for s in range(100)]
    assert clock.load(0.0, host) == pytest.approx(100 * (1 << 20) / 25e9)
    disk = [BlockCopy(Tier.DISK, 0, Tier.DEVICE, 1, 1)]
    clock.prefetch(0.0, [BlockCopy(Tier.DISK, 5, Tier.HOST, 7, 2)])  # the disk is busy with a prefetch first
    assert clock.load(0.0, disk) == pytest.approx(2 * (1 << 20) / 3e9)
    assert clock.load(0.0, [BlockCopy(Tier.HOST, 7, Tier.DEVICE, 2, 2)]) > 0 and clock.late_prefetches == 1


def test_simulated_tiers_serve_what_the_device_dropped_and_overlap_lowers_ttft() -> None:
    cost = make_cost_model("llama2-7b-a6000")
    rag = ZipfRagParams(requests=120, system_prompts=1, corpus=40, alpha=0.8, top_k=2, system_len=16,
                        passage_len=1024, question_len=16, output_len=(4, 4))
    spec = WorkloadSpec("zipf-rag", 120, zipf=rag)
    requests = timed(spec, build(spec), 2.0)
    tiers = TierConfig(host_blocks=2000, disk_blocks=4000)
    rows = {}
    for overlap in (False, True):
        model = cost.model  # type: ignore[attr-defined]
        timing = TierTiming(model.kv_bytes_per_token * 16, model.layers, overlap=overlap)
        sim = SimConfig(tiers=timing, prefetch_window=4)
        rows[overlap] = simulate_point("qas+dart", requests, SimSetup(cost, 16, sim, 8192, 0.0, tiers))
    base = simulate_point("qas+dart", requests, SimSetup(cost, 16, SimConfig(), 8192, 0.0))
    assert rows[True]["hit_rate_all"] > base["hit_rate_all"]
    by_tier = rows[True]["hit_rate_by_tier"]
    assert by_tier["host"] + by_tier["disk"] > 0 and rows[True]["tier_moved_blocks"]
    assert rows[True]["ttft_mean"] < rows[False]["ttft_mean"]
