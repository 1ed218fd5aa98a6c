"""Cache-aware schedulers: lpm, dfs-weight and qas ordering, dedup, QAS's starvation bound, DART co-design."""

from __future__ import annotations

import pytest

from router_py.scheduling.registry import QueueScheduler, make_scheduler
from router_py.scheduling.interface import SchedRequest, SchedulerConfig


def _sched(name: str, policy: str = "lru", num_blocks: int = 256, **params: float) -> QueueScheduler:
    s = make_scheduler(
        SchedulerConfig(name, policy, num_blocks=num_blocks, block_size=4, params=dict(params))
    )
    assert isinstance(s, QueueScheduler)
    return s


def _serve(s: QueueScheduler, rid: int, prompt: list[int]) -> None:
    s.enqueue(SchedRequest(rid, prompt, 1, 0.0), 0.0)
    plan = s.next_batch(0.0, 10_000, 10_000)
    assert plan is not None
    s.release(rid)


@pytest.mark.parametrize(("computed_prefix", "cached"), [(0, 0), (3, 0), (13, 12), (10_000, 40)])
def test_a_prompt_left_mid_prefill_caches_the_full_blocks_of_its_computed_tokens(
    computed_prefix: int, cached: int
) -> None:
    """release(computed=False, computed_prefix=n): n // block_size blocks of the prompt go into the tree (at
    most its full blocks), the rest of the allocation is freed; the same prompt then matches just those."""
    s = _sched("fcfs")
    prompt = SYS + [1] * 10  # 42 tokens: 10 full blocks of 4
    s.enqueue(SchedRequest(0, prompt, 1, 0.0), 0.0)
    assert _ids(s) == [0]
    s.release(0, computed=False, computed_prefix=computed_prefix)
    stats = s.cache_stats()
    assert stats["blocks_cached"] == cached // 4 and stats["blocks_in_use"] == 0
    assert s.allocator is not None
    s.allocator.check_integrity()  # raises on a leaked or doubly held block
    s.enqueue(SchedRequest(1, prompt, 1, 0.0), 0.0)
    plan = s.next_batch(0.0, 10_000, 100_000)
    assert plan is not None and plan.admissions[0].cache_len == cached


def _ids(s: QueueScheduler, budget: int = 10_000, now: float = 0.0, max_size: int | None = None) -> list[int]:
    plan = s.next_batch(now, budget, 100_000, max_size=max_size)
    return [] if plan is None else [a.request.id for a in plan.admissions]


SYS = list(range(100, 132))  # a 32-token shared prefix


def test_lpm_admits_longest_cached_prefix_first() -> None:
    s = _sched("lpm")
    _serve(s, 0, SYS + [1] * 8)
    s.enqueue(SchedRequest(1, [7] * 40, 1, 0.0), 0.0)
    s.enqueue(SchedRequest(2, SYS[:16] + [5] * 24, 1, 0.0), 0.0)
    s.enqueue(SchedRequest(3, SYS + [1] * 8 + [2] * 4, 1, 0.0), 0.0)
    assert _ids(s) == [3, 2, 1]


def test_in_batch_dedup_defers_followers_of_an_uncached_prefix() -> None:
    s = _sched("lpm")
    for rid in range(3):
        s.enqueue(SchedRequest(rid, SYS + [rid] * 8, 1, 0.0), 0.0)
    s.enqueue(SchedRequest(9, [9] * 40, 1, 0.0), 0.0)
    assert _ids(s) == [0, 9, 1, 2]


def test_dfs_weight_runs_the_heavier_subtree_first() -> None:
    s = _sched("dfs-weight")
    light, heavy = [3] * 16, [4] * 16
    _serve(s, 0, light + [0] * 4)
    _serve(s, 1, heavy + [0] * 4)
    s.enqueue(SchedRequest(2, light + [1] * 40, 1, 0.0), 0.0)
    s.enqueue(SchedRequest(3, heavy + [1] * 40, 1, 0.0), 0.0)
    s.enqueue(SchedRequest(4, [8] * 40, 1, 0.0), 0.0)
    s.enqueue(SchedRequest(5, heavy + [2] * 40, 1, 0.0), 0.0)
    assert _ids(s) == [3, 5, 2, 4]


def _hot_and_cold(s: QueueScheduler) -> None:
    _serve(s, 0, SYS)
    s.enqueue(SchedRequest(1, [6] * 40, 1, 0.0), 0.0)  # cold
    s.enqueue(SchedRequest(2, [5] * 64 + [1], 1, 0.0), 0.0)  # uncached segment shared with 4
    s.enqueue(SchedRequest(3, SYS + [2] * 8, 1, 0.0), 0.0)  # cached segment shared with 5
    s.enqueue(SchedRequest(4, [5] * 64 + [2], 1, 0.0), 0.0)
    s.enqueue(SchedRequest(5, SYS + [3] * 8, 1, 0.0), 0.0)


def test_qas_hot_lane_admits_a_cached_segment_whole_and_pioneers_an_uncached_one() -> None:
    s = _sched("qas", "dart")
    _hot_and_cold(s)
    # hot: (3, 5) reuse 2 * 32 cached tokens; cold lane FIFO: 1, then 2 as the pioneer of (2, 4)
    assert _ids(s) == [3, 5, 1, 2]
    assert _ids(s) == []  # 4 waits for its pioneer's prompt to reach the tree
    s.prefill_done(2)
    plan = s.next_batch(0.0, 10_000, 100_000)
    assert plan is not None and [(a.request.id, a.cache_len) for a in plan.admissions] == [(4, 64)]


def test_qas_an_aged_request_does_not_go_in_the_batch_that_prefills_its_segment() -> None:
    """Under a light load the mean-wait bound ages every request that waited at all (a fresh scheduler's
    bound is 0): aging orders them FIFO, but a later request of an uncached segment does not go in the batch
    that prefills it (it would prefill it twice); it goes in the next one, as a hit. Past qas_max_wait_s it
    goes anyway."""
    for now, expected in ((0.5, [1, 3]), (1.5, [1, 2, 3])):
        s = _sched("qas", "dart", qas_max_wait_s=1.0)
        s.enqueue(SchedRequest(1, [5] * 64 + [1], 1, 0.0), 0.0)
        s.enqueue(SchedRequest(2, [5] * 64 + [2], 1, 0.001), 0.001)
        s.enqueue(SchedRequest(3, [7] * 40, 1, 0.002), 0.002)
        assert s.wait_bound() == 0.0
        assert _ids(s, now=now) == expected
        if 2 not in expected:
            s.prefill_done(1)
            plan = s.next_batch(now, 10_000, 100_000)
            assert plan is not None and [(a.request.id, a.cache_len) for a in plan.admissions] == [(2, 64)]


def test_qas_pioneer_weight_promotes_uncached_groups() -> None:
    s = _sched("qas", "dart", qas_pioneer_weight=1.0)
    _hot_and_cold(s)
    # (2, 4) now worth 1 * 64 future tokens, tied with (3, 5)'s 2 * 32: the older group goes first
    assert _ids(s) == [2, 3, 5, 1]
    s.release(2)  # release also publishes the prompt
    assert _ids(s) == [4]


def test_qas_starvation_bound_under_an_adversarial_hot_stream() -> None:
    k = 5
    s = _sched("qas", "dart", qas_max_bypass=k, qas_max_wait_s=1e9, qas_window=8)
    _serve(s, 0, SYS)
    s.enqueue(SchedRequest(1, [9] * 40, 1, 0.0), 0.0)  # the cold victim
    passed, rid = 0, 2
    for _ in range(50):  # a hot request arrives every step and would always win the hot lane
        s.enqueue(SchedRequest(rid, SYS + [rid] * 4, 1, 0.0), 0.0)
        rid += 1
        admitted = _ids(s, max_size=1)
        for a in admitted:
            s.release(a)
        if 1 in admitted:
            break
        passed += len(admitted)
    assert passed == k


def test_qas_wait_bound_takes_the_oldest_first() -> None:
    s = _sched("qas", "dart", qas_max_wait_s=2.0, qas_wait_factor=0)
    _serve(s, 0, SYS)
    s.enqueue(SchedRequest(1, [9] * 40, 1, 0.0), 0.0)
    s.enqueue(SchedRequest(2, SYS + [1] * 4, 1, 1.0), 1.0)
    assert _ids(s, now=1.5, max_size=1) == [2]
    s.enqueue(SchedRequest(3, SYS + [2] * 4, 1, 1.9), 1.9)
    assert _ids(s, now=2.5, max_size=1) == [1]


def test_qas_wait_bound_follows_the_mean_queue_wait_under_the_cap() -> None:
    s = _sched("qas", "dart", qas_max_wait_s=2.0, qas_wait_factor=1.0)
    s.enqueue(SchedRequest(0, SYS, 1, 0.0), 0.0)
    assert _ids(s, now=0.32) == [0]  # waited 0.32 s: the mean queue wait becomes 0.32 / 32 = 0.01 s
    assert s.wait_bound() == pytest.approx(0.01)
    s.release(0)
    s.enqueue(SchedRequest(1, [9] * 40, 1, 1.0), 1.0)  # cold
    s.enqueue(SchedRequest(2, SYS + [1] * 4, 1, 1.0), 1.0)  # hot: its segment is cached
    assert _ids(s, now=1.0, max_size=1) == [2]  # no wait yet: the hot lane goes first
    s.enqueue(SchedRequest(3, SYS + [2] * 4, 1, 1.0), 1.0)
    assert _ids(s, now=1.02, max_size=1) == [1]  # 0.02 s > the bound: aged, long before T = 2 s
    for _ in range(200):  # long waits raise the bound up to its cap, never past it
        s.mean_wait += (10.0 - s.mean_wait) / 32
    assert s.wait_bound() == 2.0


def _evicting_batch(policy: str) -> list[int]:
    """17 usable blocks; B (older) and A cached, 4 blocks each; FIFO order (everything aged): request 2 needs
    10 blocks (one eviction), then request 3 reuses B. Returns the batch's cache_lens."""
    s = _sched("qas", policy, num_blocks=18, qas_max_wait_s=0.0)
    b_prompt = [2] * 16
    _serve(s, 0, b_prompt + [0])
    _serve(s, 1, [1] * 16 + [0])
    s.enqueue(SchedRequest(2, [3] * 36, 2, 0.0), 0.0)
    s.enqueue(SchedRequest(3, b_prompt + [5], 1, 0.0), 0.0)
    plan = s.next_batch(1.0, 10_000, 100_000)
    assert plan is not None and [a.request.id for a in plan.admissions] == [2, 3]
    return [a.cache_len for a in plan.admissions]


def test_qas_planned_batch_is_protected_from_its_own_evictions() -> None:
    assert _evicting_batch("dart") == [0, 16]  # DART cut A, the planned request's B survived
    assert _evicting_batch("lru") == [0, 12]  # LRU cut B's tail block


def test_lookahead_window_tracks_the_next_requests() -> None:
    s = _sched("fcfs", "lookahead-lru", lookahead_window=2)
    for rid in range(4):
        s.enqueue(SchedRequest(rid, [rid] * 8, 1, 0.0), 0.0)
    assert s.lookahead is not None and s.lookahead.members == {0, 1}
    assert s.cancel(0)
    assert s.lookahead.members == {1, 2}
    assert _ids(s, max_size=1) == [1] and s.lookahead.members == {2, 3}


def test_tenants_never_hit_each_others_prefixes() -> None:
    s = _sched("qas", "dart")
    s.enqueue(SchedRequest(0, SYS, 1, 0.0, "tenant-a"), 0.0)
    assert _ids(s) == [0]
    s.release(0)
    s.enqueue(SchedRequest(1, SYS + [1], 1, 0.0, "tenant-b"), 0.0)
    s.enqueue(SchedRequest(2, SYS + [2], 1, 0.0, "tenant-a"), 0.0)
    plan = s.next_batch(0.0, 10_000, 100_000)
    assert plan is not None
    assert {a.request.id: a.cache_len for a in plan.admissions} == {2: 32, 1: 0}
    stats = s.stats.by_namespace
    assert (stats["tenant-a"].hit, stats["tenant-b"].hit) == (32, 0)


def test_no_prefix_cache_flag_disables_matching_and_demand() -> None:
    s = make_scheduler(SchedulerConfig("qas", "dart", prefix_caching=False, num_blocks=64, block_size=4))
    assert isinstance(s, QueueScheduler) and s.allocator is not None
    for rid in range(2):
        s.enqueue(SchedRequest(rid, SYS, 1, 0.0), 0.0)
        plan = s.next_batch(0.0, 10_000, 100_000)
        assert plan is not None and plan.admissions[0].cache_len == 0
        s.release(rid)
    assert s.cache_stats()["blocks_cached"] == 0 and len(s.allocator._demand.queued) == 0


def test_unknown_names_and_duplicate_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_scheduler(SchedulerConfig("sjf", "lru", num_blocks=8))
    with pytest.raises(ValueError, match="unknown cache policy"):
        make_scheduler(SchedulerConfig("fcfs", "arc", num_blocks=8))
    with pytest.raises(ValueError, match="unknown scheduler params"):
        make_scheduler(SchedulerConfig("qas", "dart", num_blocks=8, params={"qas_windw": 4}))
    s = _sched("qas", "dart")
    s.enqueue(SchedRequest(1, SYS, 1, 0.0), 0.0)
    with pytest.raises(ValueError):
        s.enqueue(SchedRequest(1, SYS, 1, 0.0), 0.0)
    assert (
        s.allocator is not None
        and s.allocator._demand.queued.count(s.allocator.hashes("", tuple(SYS))[0]) == 1
    )
