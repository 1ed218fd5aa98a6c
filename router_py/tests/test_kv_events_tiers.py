"""KV cache events with the host and disk tiers on: a block demoted from the device is a GPU
``BlockRemoved`` and a CPU (host) or DISK ``BlockStored`` under the same hash, with the parent and tokens its
GPU ``BlockStored`` had; a block promoted back is the reverse. Checked by a real ZMQ subscriber
(router_py/tests/kv_subscriber.py) that keeps one view per medium."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from prism_cache import Allocation, RadixAllocator
from prism_cache.tiers import TierConfig
from router_py.kv_events.collector import KvEventCollector
from router_py.kv_events.wire import HASH_MASK
from router_py.tests.test_kv_events import Stream

BS = 4


def wire(hashes: list[int]) -> set[int]:
    return {h & HASH_MASK for h in hashes}


def step_events(stream: Stream, start: int) -> dict[tuple[str, str | None], set[int]]:
    """(tag, medium) -> the block hashes of the events the subscriber applied since log position ``start``."""
    out: dict[tuple[str, str | None], set[int]] = {}
    for tag, medium, hashes in stream.sub.view.log[start:]:
        out.setdefault((tag, medium), set()).update(hashes)
    return out


def run_step(stream: Stream, action: Callable[[], None]) -> dict[tuple[str, str | None], set[int]]:
    """Run ``action``, flush as a scheduling step does, and return what the subscriber saw of it."""
    start = len(stream.sub.view.log)
    action()
    stream.sync()
    return step_events(stream, start)


def test_demotion_to_host_and_promotion_back_publish_gpu_and_cpu_events_under_the_same_hashes() -> None:
    stream = Stream("array", tiers=True)
    try:
        alloc = RadixAllocator(5, BS, "lru", observer=stream.collector, tiers=TierConfig(host_blocks=8))
        p1, p2 = tuple(range(1, 13)), tuple(range(100, 112))  # 3 full blocks each; the device has 4 blocks
        h1, h2 = alloc.hashes("", p1), alloc.hashes("", p2)

        def serve(prompt: tuple[int, ...]) -> None:
            a = alloc.allocate(len(prompt) + 1, "", prompt)
            assert a is not None
            alloc.release(a, prompt)

        assert run_step(stream, lambda: serve(p1)) == {("BlockStored", "GPU"): wire(h1)}
        gpu = {h: stream.sub.view.blocks[h][:2] for h in wire(h1)}  # (parent, tokens) as the device had them

        # p2 pushes p1 off the device: p1's blocks are demoted to the host tier
        seen = run_step(stream, lambda: serve(p2))
        assert seen[("BlockRemoved", "GPU")] == wire(h1)
        assert seen[("BlockStored", "CPU")] == wire(h1)
        view = stream.sub.view
        assert {h: view.tiers["CPU"][h][:2] for h in wire(h1)} == gpu, "the host copies carry the same chain"
        assert view.tiers["CPU"][h1[0] & HASH_MASK] == (None, (1, 2, 3, 4), None)
        assert view.tiers["CPU"][h1[1] & HASH_MASK][:2] == (h1[0] & HASH_MASK, (5, 6, 7, 8))

        # p1 again: promoted from the host into fresh device blocks (p2 demoted to make room), then cached;
        # under the exclusive "dart" policy its host copies are dropped once the tree holds it again
        seen = run_step(stream, lambda: serve(p1))
        assert seen[("BlockStored", "GPU")] == wire(h1)
        assert seen[("BlockRemoved", "CPU")] == wire(h1)
        assert seen[("BlockRemoved", "GPU")] == seen[("BlockStored", "CPU")] == wire(h2)
        assert view.blocks.keys() == wire(h1) and view.tiers["CPU"].keys() == wire(h2)
        assert view.errors == [] and stream.sub.gaps == 0
    finally:
        stream.close()


def test_a_full_host_moves_its_victim_to_disk_under_the_same_hash() -> None:
    stream = Stream("map", tiers=True)
    try:
        tiers = TierConfig(host_blocks=3, disk_blocks=8)
        alloc = RadixAllocator(5, BS, "lru", observer=stream.collector, tiers=tiers)
        prompts = [tuple(range(k * 100, k * 100 + 12)) for k in range(3)]
        for p in prompts:
            a = alloc.allocate(len(p) + 1, "", p)
            assert a is not None
            alloc.release(a, p)
        stream.sync()
        view, first = stream.sub.view, wire(alloc.hashes("", prompts[0]))
        assert view.tiers["DISK"].keys() == first, "the host's victim went down to disk"
        assert view.tiers["CPU"].keys() == wire(alloc.hashes("", prompts[1]))
        assert view.errors == []
    finally:
        stream.close()


Running = tuple[tuple[int, ...], list[int], Allocation]  # (prompt, hashes, allocation)


def tier_churn(seed: int, ops: int, stream: Stream, policy: str) -> RadixAllocator:
    """Random facade operations with host and disk tiers (allocate with evictions, cache_prompt, release,
    rollback, failed copies, prefetch, HotPrefix's periodic promotion, one cache replacement); at every check
    the subscriber's GPU, CPU and DISK views equal the tree and the two tier indexes, and the collector
    remembers exactly the blocks some medium holds."""
    rng = random.Random(seed)
    tiers = TierConfig(host_blocks=10, disk_blocks=20, policy=policy)
    cache_policy = "hotprefix" if policy == "hotprefix" else "lru"

    def make() -> RadixAllocator:
        return RadixAllocator(24, BS, cache_policy, observer=stream.collector, tiers=tiers)

    alloc = make()
    stems = [[rng.randrange(30) for _ in range(rng.randrange(4, 20))] for _ in range(6)]
    running: list[Running] = []
    for step in range(ops):
        op = rng.random()
        if step == ops // 2:
            check_views(stream, alloc)
            stream.collector.cleared()  # as the router's announce_empty does before a rebuild
            alloc, running = make(), []
        elif op < 0.4 or not running:
            ns = rng.choice(["", "tenant-a\x00salt"])
            prompt = tuple(rng.choice(stems) + [rng.randrange(30) for _ in range(rng.randrange(0, 8))])
            hashes = alloc.hashes(ns, prompt)
            with alloc.batch([hashes]):
                a = alloc.allocate(len(prompt) + rng.randrange(1, 6), ns, prompt, hashes)
            if a is not None:
                running.append((prompt, hashes, a))
        elif op < 0.5:
            prompt, hashes, a = rng.choice(running)
            alloc.cache_prompt(a, prompt, hashes)
        elif op < 0.55:
            alloc.plan_prefetch([alloc.hashes("", tuple(s)) for s in rng.sample(stems, 2)])
        else:
            end_request(alloc, running.pop(rng.randrange(len(running))), rng.random())
        if rng.random() < 0.5:
            stream.collector.flush()  # a scheduling step ends
        if step % 1000 == 999:
            check_views(stream, alloc)
    for item in running:
        end_request(alloc, item, 0.0)
    check_views(stream, alloc)
    return alloc


def end_request(alloc: RadixAllocator, item: Running, roll: float) -> None:
    """Release (80%), or roll back after every copy failed (10%), or before the copies left (10%)."""
    prompt, hashes, a = item
    if roll < 0.8:
        alloc.release(a, prompt, hashes)
    elif roll < 0.9:
        for copy in a.copies:
            alloc.copy_failed(copy)
        alloc.rollback(a, sent=True)
    else:
        alloc.rollback(a)


def check_views(stream: Stream, alloc: RadixAllocator) -> None:
    stream.sync()
    view, tiers = stream.sub.view, alloc.tiers
    assert tiers is not None
    assert view.errors == [] and stream.sub.gaps == 0
    gpu, host, disk = alloc.cached_hashes(), set(tiers.index.host.slot_of), set(tiers.index.disk.slot_of)
    assert view.blocks.keys() == wire(list(gpu)), "GPU view differs from the tree"
    assert view.tiers["CPU"].keys() == wire(list(host)), "CPU view differs from the host tier"
    assert view.tiers["DISK"].keys() == wire(list(disk)), "DISK view differs from the disk tier"
    chains = stream.collector.chains
    assert chains is not None and chains.kept() == gpu | host | disk, "kept for a block no medium holds"


@pytest.mark.parametrize("policy,seed", [("dart", 5), ("hotprefix", 6), ("lru-offload", 7)])
def test_subscriber_tracks_every_medium_under_tier_churn(policy: str, seed: int) -> None:
    stream = Stream("array", tiers=True)
    try:
        alloc = tier_churn(seed, 3_000, stream, policy)
        assert alloc.tiers is not None
        counts = {m: sum(1 for tag, medium, _ in stream.sub.view.log if medium == m) for m in ("CPU", "DISK")}
        assert counts["CPU"] > 50 and counts["DISK"] > 10, f"the churn barely used the tiers: {counts}"
    finally:
        stream.close()


def test_a_collector_told_nothing_of_tiers_sends_copies_as_vllms_offloading_does() -> None:
    """Without ``tiers`` the collector keeps no chains: a tier copy still goes out under its hash and medium,
    with no parent and no tokens (vLLM's offloading connector's form), one event per copy."""
    seen: list[list[tuple[object, ...]]] = []
    collector = KvEventCollector(lambda ts, events: seen.append(list(events)))
    alloc = RadixAllocator(5, BS, "lru", observer=collector, tiers=TierConfig(host_blocks=8))
    for p in (tuple(range(1, 13)), tuple(range(100, 112))):
        a = alloc.allocate(len(p) + 1, "", p)
        assert a is not None
        alloc.release(a, p)
        collector.flush()
    h1 = alloc.hashes("", tuple(range(1, 13)))
    assert [e for e in seen[-1] if e[-1] == "CPU"] == [("stored", "", None, (h,), (), "CPU") for h in h1]
