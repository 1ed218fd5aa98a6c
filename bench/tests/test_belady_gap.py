"""bench.belady_gap: the distance to the Belady bound split by kind of reuse, and the cache by next use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.belady_gap import dead_cache, gap_report, lost_hits, oracle_hit_rate
from bench.replay import load_mooncake
from bench.tests.test_replay import _trace
from router_py.scheduling.interface import SchedulerConfig
from router_py.scheduling.registry import QueueScheduler, make_scheduler


def test_lost_hits_count_exactly_the_blocks_between_policy_and_bound() -> None:
    a, a2 = [1, 2, 3], [1, 2, 3, 4]
    assert lost_hits([a, a2], [0, 1], [0, 3], window=1) == {("first reuse", "continuation", "<=W"): 2}
    far = lost_hits([a, [8], [9], a2], [0, 0, 0, 1], [0, 0, 0, 3], window=1)  # 3 admissions later
    assert far == {("first reuse", "continuation", "<=4W"): 2}
    b = [1, 2, 7]  # shares two blocks of a2 (both used twice before), right after it
    lost = lost_hits([a, a2, b], [0, 3, 0], [0, 3, 2], window=1)
    assert lost == {("reused before", "branch", "<=W"): 2}


def test_dead_cache_classifies_cached_blocks_by_uses_so_far_and_next_use() -> None:
    hashes = [[1, 2], [1], [3], [1, 3], [9], [9], [3]]
    dead = dead_cache(hashes, [(3, {1, 2, 3})], window=1)
    # after 3 admissions: 1 was used twice and 3 once, both used by the next request; 2 once, never again
    assert dead == {("used 2+", "<=W"): 1, ("used once", "<=W"): 1, ("used once", "never"): 1}
    later = dead_cache(hashes, [(4, {3})], window=1)  # 3 is next used 3 admissions later: within 4W
    assert later == {("used 2+", "<=4W"): 1}


def test_gap_report_splits_what_the_policy_misses(tmp_path: Path) -> None:
    requests = load_mooncake(str(_trace(tmp_path)))
    scheduler = make_scheduler(SchedulerConfig("fcfs", "lru", True, 8192 // 64 + 1, 64))
    assert isinstance(scheduler, QueueScheduler)
    report = gap_report(requests, scheduler, 8192, window=4, sample_every=3)
    hit, bound = report["hit_rate"], report["belady_hit_rate"]
    assert isinstance(hit, float) and isinstance(bound, float) and bound > hit
    lost = report["lost"]
    assert isinstance(lost, dict) and sum(lost.values()) == pytest.approx(bound - hit, abs=0.01)
    cached = report["cached_by_next_use"]
    assert isinstance(cached, dict) and sum(cached.values()) == pytest.approx(1.0)


def test_next_use_eviction_in_the_replayed_order_reaches_the_bound(tmp_path: Path) -> None:
    requests = load_mooncake(str(_trace(tmp_path)))

    def fcfs(policy: str) -> QueueScheduler:
        s = make_scheduler(SchedulerConfig("fcfs", policy, True, 8192 // 64 + 1, 64))
        assert isinstance(s, QueueScheduler)
        return s

    lru = gap_report(requests, fcfs("lru"), 8192, window=4)
    order = lru["order"]
    assert isinstance(order, list) and order == list(range(len(requests)))  # fcfs: the oracle's order holds
    hit, bound = oracle_hit_rate(requests, fcfs("lru"), order, 8192, window=4)
    # above LRU, below the bound (which ignores what the running request holds)
    assert bound == lru["belady_hit_rate"] and lru["hit_rate"] + 0.02 < hit <= bound  # type: ignore[operator]


def test_return_oracle_keeps_what_comes_back_and_stays_below_the_bound(tmp_path: Path) -> None:
    rows: list[list[int]] = []
    for turn in range(6):  # a session comes back after two one-off requests, each over half the cache
        rows.append(list(range(turn + 2)))
        rows += [[100 * (2 * turn + k + 1) + i for i in range(6)] for k in range(2)]
    trace = tmp_path / "trace.jsonl"
    row = {"timestamp": 0, "output_length": 1}
    lines = [json.dumps({**row, "input_length": 512 * len(r), "hash_ids": r}) for r in rows]
    trace.write_text("\n".join(lines) + "\n")
    requests = load_mooncake(str(trace))

    def fcfs() -> QueueScheduler:
        s = make_scheduler(SchedulerConfig("fcfs", "lru", True, 8192 // 64 + 1, 64))
        assert isinstance(s, QueueScheduler)
        return s

    lru = gap_report(requests, fcfs(), 8192, window=1)
    order = lru["order"]
    assert isinstance(order, list)
    hit, bound = oracle_hit_rate(requests, fcfs(), order, 8192, window=1, return_horizon=0)
    # LRU told which blocks are used again (not when) keeps the session: above plain LRU, at most the bound
    assert bound == lru["belady_hit_rate"] and lru["hit_rate"] + 0.02 < hit <= bound  # type: ignore[operator]


def test_workload_gap_rows_stay_under_their_own_bound() -> None:
    from bench.replay_workload import prefill_rate, replay_requests, working_set_tokens
    from bench.workload_gap import workload_gap
    from bench.workloads import WorkloadSpec, build
    from bench.workloads.conversation import ConversationParams

    spec = WorkloadSpec("conversation", None, 0, conversation=ConversationParams(sessions=30))
    requests = replay_requests(build(spec))
    longest = max(len(r.prompt) + r.output_length for r in requests)
    capacity = max(working_set_tokens(requests, 16) // 4, longest + 16)
    config = SchedulerConfig("qas", "dart", True, capacity // 16 + 1, 16, params={"qas_window": 8.0})
    report = workload_gap(requests, config, capacity, 8, prefill_rate(requests, 0.8), horizons=(0, 16))
    assert set(report) == {"policy", "next_use_oracle", "return_oracle_ever", "return_oracle_16"}
    for row in report.values():
        assert 0 < row["hit_rate"] <= row["belady_hit_rate"] + 1e-9
