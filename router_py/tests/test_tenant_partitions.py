"""Per-tenant capacity shares (one scheduler per partition of the KV pool), driven directly as the batcher does:
another tenant's flood no longer lowers a tenant's prefix-cache hits, and another tenant's cache hits no longer
move a tenant's requests; the shared scheduler, run on the same traffic, shows both effects (the baseline)."""

from __future__ import annotations

import dataclasses

import pytest

from prism_cache.tiers import TierConfig
from router_py.scheduling.interface import SchedRequest, SchedulerConfig
from router_py.scheduling.registry import make_scheduler
from router_py.scheduling.tenant_partitions import TenantPartitionedScheduler

BS = 16


def config(scheduler: str, policy: str, blocks: int = 64) -> SchedulerConfig:
    return SchedulerConfig(scheduler=scheduler, cache_policy=policy, num_blocks=blocks, block_size=BS)


def partitioned(scheduler: str, policy: str, blocks: int = 64) -> TenantPartitionedScheduler:
    """Tenants a and b, half the pool each, and no other tenant (``others=False``)."""
    return TenantPartitionedScheduler(
        config(scheduler, policy, blocks), {"a": 0.5, "b": 0.5}, make_scheduler, others=False
    )


def prompt(seed: int, blocks: int, tail: int = 5) -> list[int]:
    return [seed * 1000 + i for i in range(blocks * BS)] + [7] * tail


class Driver:
    """Enqueue, admit (whole batch), prefill and release at once: no two requests overlap."""

    def __init__(self, sched) -> None:
        self.sched, self.next_id, self.now = sched, 0, 0.0
        self.admitted: list[tuple[str, int]] = []  # (namespace, request id) in admission order, per step
        self.hits: dict[str, int] = {}

    def enqueue(self, namespace: str, tokens: list[int], max_new: int = 4) -> int:
        rid, self.next_id = self.next_id, self.next_id + 1
        self.now += 0.001
        self.sched.enqueue(SchedRequest(rid, tuple(tokens), max_new, self.now, namespace), self.now)
        return rid

    def step(self, max_size: int | None = None) -> list[tuple[str, int]]:
        plan = self.sched.next_batch(self.now, 100_000, 100_000, max_size=max_size)
        done = []
        for adm in plan.admissions if plan is not None else []:
            ns = adm.request.namespace
            self.hits[ns] = self.hits.get(ns, 0) + adm.cache_len
            self.sched.prefill_done(adm.request.id)
            self.sched.release(adm.request.id)
            done.append((ns, adm.request.id))
        self.admitted.append(done)
        return done


def tenant_a_hits(sched, flood: bool) -> int:
    """Tenant a cycles over 3 prefixes of 4 blocks; with ``flood`` tenant b sends a new 20-block prompt each
    time. Returns a's hit tokens."""
    d = Driver(sched)
    for i in range(30):
        d.enqueue("a", prompt(i % 3, 4))
        if flood:
            d.enqueue("b", prompt(100 + i, 20))
        d.step()
    return d.hits.get("a", 0)


def test_a_share_keeps_a_tenants_cache_whatever_the_others_send() -> None:
    quiet, noisy = tenant_a_hits(partitioned("qas", "lru"), False), tenant_a_hits(partitioned("qas", "lru"), True)
    assert quiet == noisy == 27 * 4 * BS  # every request after the first three hits its 4 blocks
    shared_quiet = tenant_a_hits(make_scheduler(config("qas", "lru")), False)
    shared_noisy = tenant_a_hits(make_scheduler(config("qas", "lru")), True)
    assert shared_quiet == quiet and shared_noisy < quiet / 2, "baseline: a shared pool lets b evict a"


def tenant_a_steps(sched, b_hits: bool) -> list[int]:
    """A burst of 6 a-requests and 6 b-requests, one admission per step; b's prompts share a prefix that is
    cached beforehand (``b_hits``) or are all different. Returns the step at which each a-request ran."""
    d = Driver(sched)
    d.enqueue("b", prompt(50, 6) if b_hits else prompt(99, 6))
    d.step()
    ids = []
    for i in range(6):
        ids.append(d.enqueue("a", prompt(10 + i, 3)))
        d.enqueue("b", prompt(50, 6, tail=5 + i) if b_hits else prompt(60 + i, 6))
    while sched.waiting_count():
        d.step(max_size=1)
    step_of = {rid: s for s, batch in enumerate(d.admitted) for _, rid in batch}
    return [step_of[rid] for rid in ids]


@pytest.mark.parametrize("scheduler", ["lpm", "qas"])
def test_another_tenants_hits_do_not_move_a_tenants_requests(scheduler: str) -> None:
    with_hits = tenant_a_steps(partitioned(scheduler, "lru", 256), b_hits=True)
    without = tenant_a_steps(partitioned(scheduler, "lru", 256), b_hits=False)
    assert with_hits == without
    assert with_hits == [1, 3, 5, 7, 9, 11]  # turns alternate between the two tenants


def test_baseline_shared_lpm_lets_hits_jump_ahead() -> None:
    with_hits = tenant_a_steps(make_scheduler(config("lpm", "lru", 256)), b_hits=True)
    without = tenant_a_steps(make_scheduler(config("lpm", "lru", 256)), b_hits=False)
    assert with_hits != without


def test_blocks_and_slots_are_global_and_disjoint() -> None:
    sched = partitioned("fcfs", "lru", 64)
    d = Driver(sched)
    d.enqueue("a", prompt(1, 2))
    d.enqueue("b", prompt(2, 2))
    plan_blocks = []
    plan = sched.next_batch(1.0, 10_000, 10_000)
    for adm in plan.admissions:
        plan_blocks.append((adm.request.namespace, adm.blocks))
        assert adm.slots[0] == adm.blocks[0] * BS and adm.slots[-1] < (adm.blocks[-1] + 1) * BS
    (a_blocks,), (b_blocks,) = ([b for ns, b in plan_blocks if ns == t] for t in ("a", "b"))
    assert all(0 < x < 32 for x in a_blocks) and all(32 < x < 64 for x in b_blocks)
    stats = sched.cache_stats()
    assert stats["blocks_total"] == 62 and stats["blocks_in_use"] == len(a_blocks) + len(b_blocks)


def test_shares_too_small_or_padded_shards_are_refused() -> None:
    with pytest.raises(ValueError, match="is 0, fewer than the 2"):
        TenantPartitionedScheduler(config("fcfs", "lru", 10), {"a": 0.05}, make_scheduler)
    # a partition that cannot hold one request of max_total_tokens would let a valid request wait for ever
    with pytest.raises(ValueError, match="tenant '\\(others\\)'.*is 24, fewer than the 33"):
        TenantPartitionedScheduler(config("fcfs", "lru", 64), {"a": 0.625}, make_scheduler, min_blocks=33)
    padded = SchedulerConfig(num_blocks=None)
    with pytest.raises(ValueError, match="paged shard"):
        TenantPartitionedScheduler(padded, {"a": 0.5}, make_scheduler)
    tiered = dataclasses.replace(config("fcfs", "lru", 64), tiers=TierConfig(host_blocks=8))
    with pytest.raises(ValueError, match="KV tiers"):
        TenantPartitionedScheduler(tiered, {"a": 0.5}, make_scheduler)


def test_tenants_without_a_share_never_fall_into_a_shared_tenants_partition() -> None:
    """Shares adding up to (about) 1 leave fewer than 2 blocks for the tenants without a share: they used to be
    put silently into the last share's partition (here b's), where their flood evicted b's cache. With such
    tenants (``others``, the default) that is refused at start, as a too small leftover already was."""
    for shares in ({"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.49}):
        with pytest.raises(ValueError, match="tenant '\\(others\\)'.*fewer than the 2"):
            TenantPartitionedScheduler(config("fcfs", "lru", 64), shares, make_scheduler)
    sched = partitioned("fcfs", "lru", 64)
    assert [p.name for p in sched.partitions] == ["a", "b"]


def test_a_small_leftover_is_not_refused_when_every_tenant_has_a_share() -> None:
    """Without tenants outside the shares nobody uses the leftover: it need not hold a request (it did)."""
    sched = TenantPartitionedScheduler(
        config("fcfs", "lru", 64), {"a": 0.625}, make_scheduler, min_blocks=33, others=False
    )
    assert [p.name for p in sched.partitions] == ["a"]


def test_salted_namespaces_use_their_tenants_partition() -> None:
    sched = TenantPartitionedScheduler(config("fcfs", "lru", 64), {"a": 0.25, "b": 0.25}, make_scheduler)
    assert sched.partition_of("a\x00some-salt") is sched.partition_of("a")
    assert sched.partition_of("nobody").name == "" and sched.partition_of("nobody").offset == 32
