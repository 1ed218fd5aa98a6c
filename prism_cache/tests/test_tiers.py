"""KV tiers under the tree: accounting and data placement under random churn (a model shard runs every copy
and checks it moves the right block), tenant isolation, and each placement policy's behaviour."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from prism_cache import RadixAllocator
from prism_cache.tiers import BlockCopy, Tier, TierConfig
from prism_cache.tiers.manager import MASK
from prism_cache.tiers.metadata_index import MetadataIndex

BS = 2


class ModelShard:
    """What each slot of each tier holds (a block hash, or None), updated by running copies in order. Like the
    real shard it checks the hash recorded with a copy's source and fails the copy on a mismatch (a copy that
    read a slot an earlier failed copy should have filled); ``fail``: indices failed on purpose. ``sent``:
    copies received per direction (what the manager's ``moved`` counters must equal once nothing is pending)."""

    def __init__(self) -> None:
        self.kv: dict[tuple[Tier, int], int | None] = {}
        self.injected = False
        self.sent: Counter[tuple[Tier, Tier]] = Counter()

    def run(self, copies: list[BlockCopy], fail: set[int] | None = None) -> list[int]:
        failed = []
        for i, c in enumerate(copies):
            self.sent[(c.src_tier, c.dst_tier)] += 1
            assert c.src_tier != c.dst_tier
            if fail and i in fail:
                self.injected = True
            elif self.kv.get((c.src_tier, c.src_slot)) == c.block_hash:
                self.kv[(c.dst_tier, c.dst_slot)] = c.block_hash
                continue
            else:
                assert self.injected, f"copy of the wrong block with no fault injected: {c}"
            failed.append(i)
            self.kv[(c.dst_tier, c.dst_slot)] = None
        return failed


def _check_placement(a: RadixAllocator, shard: ModelShard) -> None:
    """Every block the tree or a tier index names holds that block's KV."""
    for node in a._tree.nodes():
        for b, h in zip(node.blocks, node.hashes):
            assert shard.kv.get((Tier.DEVICE, b)) == h & MASK, "device block holds another block's KV"
    assert a.tiers is not None
    for tier, index in a.tiers.index.tiers.items():
        for h, slot in index.slot_of.items():
            assert shard.kv.get((tier, slot)) == h & MASK, f"{tier.name} slot holds another block's KV"


def _check_conservation(a: RadixAllocator, shard: ModelShard, running: list[tuple]) -> None:
    """Nothing pending: every copy counted as a move reached the shard, once; every pin is held by a running
    allocation's promotion (a rolled-back or released one holds none)."""
    assert a.tiers is not None
    moved = {k: v for k, v in a.tiers.counters.moved.items() if v}
    assert moved == dict(shard.sent), "moves counted != copies sent"
    held = Counter(h for alloc, _, _ in running for _, _, h in alloc._found)
    assert all(n <= held[h] for h, n in a.tiers.pinned.items()), "a pin no running allocation holds"


def _fail_prefill(a: RadixAllocator, alloc, shard: ModelShard, rng: random.Random) -> None:
    """The Prefill carrying ``alloc``'s copies failed or was cancelled after they were sent: the batcher reports
    every copy failed (the shard may have run none, some or all), the forward may have written part of the
    fresh blocks, and the scheduler rolls the allocation back (tier_link.py, queue_scheduler.release)."""
    ran = rng.randrange(len(alloc.copies) + 1)
    shard.run(alloc.copies[:ran])
    shard.sent.update((c.src_tier, c.dst_tier) for c in alloc.copies[ran:])
    for copy in alloc.copies:
        a.copy_failed(copy)
    for b in alloc.blocks[alloc.depth :]:
        if rng.random() < 0.5:
            shard.kv[(Tier.DEVICE, b)] = None  # garbage: must be cached nowhere
    a.rollback(alloc, sent=True)


def _undone(a: RadixAllocator, alloc, before: tuple) -> None:
    """A batch undone before its copies left: pins and prefetch accounting are as before the allocation."""
    a.rollback(alloc)
    assert a.tiers is not None
    assert (dict(a.tiers.pinned), a.tiers.counters.prefetch_used) == before, "rollback left promotion state"


def _churn(policy: str, steps: int, seed: int, fail_rate: float = 0.0) -> RadixAllocator:
    rng = random.Random(seed)
    a = RadixAllocator(24, BS, "dart", tiers=TierConfig(host_blocks=10, disk_blocks=16, policy=policy))
    shard = ModelShard()
    heads = [tuple(rng.randrange(50) for _ in range(6)) for _ in range(5)]
    running: list[tuple] = []
    queued: list[list[int]] = []
    promoted = 0
    for _ in range(steps):
        op = rng.random()
        if op < 0.45 and len(running) < 3:
            ns = rng.choice(("t1", "t2"))
            tail = tuple(rng.randrange(50) for _ in range(rng.randrange(3)))
            prompt = rng.choice(heads)[: rng.randrange(2, 7)] + tail
            hashes = a.hashes(ns, prompt)
            assert a.tiers is not None
            before = (dict(a.tiers.pinned), a.tiers.counters.prefetch_used)
            alloc = a.allocate(len(prompt) + 1, ns, prompt, hashes)
            if alloc is None:
                continue
            roll = rng.random()
            if roll < 0.15:
                _undone(a, alloc, before)
            elif roll < 0.25:
                _fail_prefill(a, alloc, shard, rng)
            if roll < 0.25:
                shard.run(a.plan_prefetch([]))
                a.check_integrity()
                _check_placement(a, shard)
                _check_conservation(a, shard, running)
                continue
            fail = {i for i in range(len(alloc.copies)) if rng.random() < fail_rate}
            for i in shard.run(alloc.copies, fail):
                a.copy_failed(alloc.copies[i])
                fail.add(i)
            depth_blocks = alloc.prefix_len // BS
            for i, b in enumerate(alloc.blocks):  # the forward (it recomputes what a failed copy did not bring)
                if i < depth_blocks and not fail:
                    assert shard.kv[(Tier.DEVICE, b)] == hashes[i] & MASK, "a cached prefix block has other KV"
                shard.kv[(Tier.DEVICE, b)] = hashes[i] & MASK if i < len(hashes) else None
            assert sum(alloc.hit_tokens_by_tier.values()) == alloc.prefix_len
            running.append((alloc, prompt, hashes))
        elif op < 0.6 and running:
            alloc, prompt, hashes = rng.choice(running)
            a.cache_prompt(alloc, prompt, hashes)
        elif op < 0.9 and running:
            alloc, prompt, hashes = running.pop(rng.randrange(len(running)))
            if not alloc.published and rng.random() < 0.3:
                # its client left mid-prefill: the KV of the first k blocks is computed (at least the prefix it
                # was given), the rest garbage, and only those k are released into the tree (queue_scheduler)
                k = rng.randint(alloc.prefix_len // BS, len(hashes))
                for b in alloc.blocks[k:]:
                    shard.kv[(Tier.DEVICE, b)] = None
                prompt, hashes = prompt[: k * BS], hashes[:k]
            a.release(alloc, prompt, hashes)
        elif op < 0.95:
            promoted += a.promote_hot()
        else:
            queued = [a.hashes(rng.choice(("t1", "t2")), h) for h in rng.sample(heads, 2)]
            copies = a.plan_prefetch(queued)
            for i in shard.run(copies, {i for i in range(len(copies)) if rng.random() < fail_rate}):
                a.copy_failed(copies[i])
        shard.run(a.plan_prefetch([]))  # pending demotions run before anything else reuses their slots
        a.check_integrity()
        _check_placement(a, shard)
        _check_conservation(a, shard, running)
    assert promoted > 0 or policy != "hotprefix", "hotprefix never promoted a host run periodically"
    return a


@pytest.mark.parametrize(
    "policy,steps,fail_rate",
    [
        ("dart", 100_000, 0.0),
        ("dart", 10_000, 0.03),
        ("hotprefix", 10_000, 0.0),
        ("lru-offload", 10_000, 0.03),
    ],
)
def test_accounting_and_placement_hold_under_random_churn(policy: str, steps: int, fail_rate: float) -> None:
    a = _churn(policy, steps, 7, fail_rate)
    assert a.tiers is not None
    moved = a.tiers.counters.moved
    assert moved.get((Tier.HOST, Tier.DEVICE), 0) > 0, "the churn never promoted from the host"
    if policy != "hotprefix":
        assert moved.get((Tier.HOST, Tier.DISK), 0) > 0, "the churn never demoted to disk"


def test_tiers_off_is_the_plain_allocator() -> None:
    a = RadixAllocator(8, BS, "lru", tiers=TierConfig())
    assert a.tiers is None and a.plan_prefetch([[1, 2]]) == []
    alloc = a.allocate(5, "", (1, 2, 3, 4))
    assert alloc is not None and alloc.copies == [] and alloc.hit_tokens_by_tier == {}


def _fill_and_evict(policy: str, reuse: int = 0) -> tuple[RadixAllocator, tuple[int, ...]]:
    """Cache a 4-block prompt (reused ``reuse`` times), then push it off the 5-block device with others."""
    a = RadixAllocator(6, BS, "lru", tiers=TierConfig(host_blocks=16, policy=policy))
    prompt = (1, 1, 2, 2, 3, 3, 4, 4)
    for _ in range(1 + reuse):
        got = a.allocate(8, "t", prompt)
        assert got is not None
        a.release(got, prompt)
    for k in range(3):
        other = (9, k, 9, k, 9, k, 9, k)
        got = a.allocate(8, "t", other)
        assert got is not None
        a.release(got, other)
    return a, prompt


@pytest.mark.parametrize("policy", ["dart", "lru-offload"])
def test_an_evicted_prompt_comes_back_from_the_host(policy: str) -> None:
    a, prompt = _fill_and_evict(policy)
    hashes = a.hashes("t", prompt)
    assert a._tree.cached_prefix_blocks(hashes) == 0, "the prompt should have left the device"
    assert a.peek(hashes) == 8, "schedulers rank by what a request reuses from any tier"
    got = a.allocate(9, "t", prompt)
    assert got is not None and got.prefix_len == 8
    assert got.hit_tokens_by_tier[Tier.HOST] == 8
    promotions = [c for c in got.copies if c.dst_tier == Tier.DEVICE]
    assert [c.dst_slot for c in promotions] == list(got.blocks[:4])
    a.release(got, prompt)
    a.check_integrity()


def test_hotprefix_admits_only_blocks_used_twice() -> None:
    a, prompt = _fill_and_evict("hotprefix")
    assert a.tiers is not None and len(a.tiers.index.host) == 0, "a block used once entered the host"
    a, prompt = _fill_and_evict("hotprefix", reuse=1)
    assert all(h in a.tiers.index.host for h in a.hashes("t", prompt)[:1])  # type: ignore[union-attr]


def test_hotprefix_promotes_a_hot_host_run_in_place_of_colder_device_leaves() -> None:
    a, prompt = _fill_and_evict("hotprefix", reuse=2)  # used 3 times, then pushed off by prompts used once
    hashes = a.hashes("t", prompt)
    assert a._tree.cached_prefix_blocks(hashes) == 0 and a.tiers is not None
    assert a.promote_hot() == 4
    assert a._tree.cached_prefix_blocks(hashes) == 4 and not any(h in a.tiers.index.host for h in hashes)
    ups = [c for c in a.plan_prefetch([]) if c.dst_tier == Tier.DEVICE]
    assert [c.block_hash for c in ups] == [h & MASK for h in hashes]
    a.check_integrity()
    got = a.allocate(9, "t", prompt)
    assert got is not None and got.hit_tokens_by_tier[Tier.DEVICE] == 8
    a.rollback(got)


def _serve(a: RadixAllocator, shard: ModelShard, prompt: tuple[int, ...]) -> int:
    """One request for ``prompt`` from admission to release, as the batcher runs it: the shard runs its copies
    (demotions, then promotions), the forward writes the blocks it computes, the release caches the prompt,
    then the pending demotions run. Checks every invariant and that nothing is held once it is gone; returns
    the prompt tokens the request took from the host tier."""
    hashes = a.hashes("t", prompt)
    alloc = a.allocate(len(prompt), "t", prompt, hashes)
    assert alloc is not None and shard.run(alloc.copies) == []
    for i, b in enumerate(alloc.blocks):
        if i < alloc.prefix_len // BS:
            assert shard.kv[(Tier.DEVICE, b)] == hashes[i] & MASK, "a reused block holds other KV"
        shard.kv[(Tier.DEVICE, b)] = hashes[i] & MASK
    a.release(alloc, prompt, hashes)
    shard.run(a.plan_prefetch([]))
    a.check_integrity()
    _check_placement(a, shard)
    _check_conservation(a, shard, [])
    sizes = a.sizes()
    assert sizes.in_use == 0 and sizes.free + sizes.cached == sizes.total, "blocks not conserved"
    return alloc.hit_tokens_by_tier[Tier.HOST]


def test_hotprefix_keeps_the_uses_of_a_prefix_promoted_on_use() -> None:
    """A hot prefix that a request brings back from the host keeps its use count on the device, so its next
    eviction admits it to the host again (it was recomputed from then on when the tree's new node started at
    no hits and the exclusive host dropped its entry)."""
    a = RadixAllocator(6, BS, "lru", tiers=TierConfig(host_blocks=16, policy="hotprefix"))
    shard = ModelShard()
    prompt = (1, 1, 2, 2, 3, 3, 4, 4)
    others = [(9, k) * 4 for k in range(3)]  # used once each: never admitted, they only push the prompt off
    hashes = a.hashes("t", prompt)
    host = a.tiers.index.host  # type: ignore[union-attr]
    for p in (prompt, prompt, *others):
        _serve(a, shard, p)
    assert all(h in host for h in hashes), "used twice, then evicted: the host should hold it"
    longer = prompt + (5, 5)  # the promoted prefix and one block computed now
    assert _serve(a, shard, longer) == 8, "promoted on use"
    assert not any(h in host for h in hashes), "the exclusive host dropped its copies"
    for p in others:
        _serve(a, shard, p)
    assert all(h in host for h in hashes), "its uses were lost on the device: evicted below the threshold"
    assert [a.tiers.orders[Tier.HOST][h] for h in hashes] == [3.0] * 4  # type: ignore[union-attr]
    assert a.hashes("t", longer)[-1] not in host, "the block computed once took the prefix's count"
    assert _serve(a, shard, prompt) == 8, "recomputed instead of read from the host"


def test_lru_offload_writes_through_and_dart_writes_back() -> None:
    for policy, expect in (("lru-offload", 4), ("dart", 0)):
        a = RadixAllocator(16, BS, "lru", tiers=TierConfig(host_blocks=8, policy=policy))
        got = a.allocate(8, "t", (1, 1, 2, 2, 3, 3, 4, 4))
        assert got is not None
        a.release(got, (1, 1, 2, 2, 3, 3, 4, 4))
        assert a.tiers is not None and len(a.tiers.index.host) == expect


def test_tenants_never_share_a_block_in_any_tier() -> None:
    a, prompt = _fill_and_evict("dart")
    got = a.allocate(9, "other-tenant", prompt)
    assert got is not None and got.prefix_len == 0 and not got.hit_tokens_by_tier[Tier.HOST]
    a.rollback(got)


def test_without_a_host_tier_evictions_go_to_disk_and_nothing_is_prefetched() -> None:
    a = RadixAllocator(6, BS, "lru", tiers=TierConfig(host_blocks=0, disk_blocks=8, policy="dart"))
    prompt = (1, 1, 2, 2, 3, 3, 4, 4)
    got = a.allocate(8, "t", prompt)
    assert got is not None
    a.release(got, prompt)
    got = a.allocate(9, "t", (7, 7, 7, 7, 7, 7, 7, 7))  # evicts the prompt straight to disk
    assert got is not None and [c.dst_tier for c in got.copies] == [Tier.DISK] * 4
    assert a.plan_prefetch([a.hashes("t", prompt)]) == []  # no host tier to prefetch into
    a.rollback(got)


def test_prefetch_brings_a_waiting_request_from_disk_to_host_and_admission_reads_the_host() -> None:
    a = RadixAllocator(6, BS, "lru", tiers=TierConfig(host_blocks=4, disk_blocks=16, policy="dart"))
    prompt = (1, 1, 2, 2, 3, 3, 4, 4)
    for p in (prompt, *((k,) * 8 for k in range(5, 9))):  # the prompt: device -> host -> disk
        got = a.allocate(8, "t", p)
        assert got is not None
        a.release(got, p)
    hashes = a.hashes("t", prompt)
    assert a.tiers is not None
    assert all(h in a.tiers.index.disk and h not in a.tiers.index.host for h in hashes)
    copies = a.plan_prefetch([hashes])
    ups = [c for c in copies if (c.src_tier, c.dst_tier) == (Tier.DISK, Tier.HOST)]
    assert len(ups) == 4 and copies[-1] == ups[-1]  # each after the copy that emptied its host slot
    got = a.allocate(9, "t", prompt, hashes)
    assert got is not None and got.hit_tokens_by_tier[Tier.HOST] == 8
    assert a.tiers.counters.prefetch_used == 4
    a.release(got, prompt)
    a.check_integrity()


def test_prefix_run_probes_once_per_whole_run_and_walks_a_broken_one() -> None:
    index = MetadataIndex(8, 8)
    run = [10, 11, 12, 13]
    for slot, h in enumerate(run):
        index.host.put(h, slot, run=run, offset=slot)
    probes = []
    index.host.slot_of = _Counting(index.host.slot_of, probes)  # type: ignore[assignment]
    assert index.prefix_run([10, 11, 12, 13, 14], 0, 5) == 4 and len(probes) == 2  # the run, then 14's miss
    assert index.prefix_run([11, 12, 99], 0, 3) == 2  # the prompt parts from the run inside it
    index.host.slot_of = dict(index.host.slot_of)  # type: ignore[assignment]
    index.host.drop(12)
    index.disk.put(12, 0)
    assert index.prefix_run([10, 11, 12, 13], 0, 4) == 4  # broken run: block by block, 12 from disk
    index.disk.drop(12)
    assert index.prefix_run([10, 11, 12, 13], 0, 4) == 2
    assert index.prefix_run([99, 11], 0, 2) == 0
    assert index.lookup(13) is not None and index.lookup(13).tier == Tier.HOST  # type: ignore[union-attr]
    assert not index.host.runs or all(r[1] == 3 for r in index.host.runs.values())


class _Counting(dict):
    """A dict that records every ``get``."""

    def __init__(self, data: dict, log: list) -> None:
        super().__init__(data)
        self.log = log

    def get(self, key, default=None):  # type: ignore[override]
        self.log.append(key)
        return super().get(key, default)


def test_prefetch_for_an_unchanged_queue_moves_nothing_more_and_keeps_the_head() -> None:
    """A window whose disk blocks exceed the host: the head's prefetched blocks are no victims of the next
    request's prefetch, so the host keeps the head's blocks and a second plan for the same queue copies
    nothing. Before, each plan traded the head's blocks for the tail's (12 disk -> host copies into a 4-block
    host on every step, live: 34,868 blocks prefetched for 281 used)."""
    a = RadixAllocator(6, BS, "lru", tiers=TierConfig(host_blocks=4, disk_blocks=32, policy="dart"))
    prompts = [(k,) * 8 for k in range(1, 9)]  # 4 blocks each
    for p in prompts:  # each pushes the earlier ones down, to disk at last
        got = a.allocate(8, "t", p)
        assert got is not None
        a.release(got, p)
    a.plan_prefetch([])
    waiting = [a.hashes("t", p) for p in prompts[:3]]
    assert a.tiers is not None
    assert all(h in a.tiers.index.disk and h not in a.tiers.index.host for h in waiting[0])
    ups = [c for c in a.plan_prefetch(waiting) if (c.src_tier, c.dst_tier) == (Tier.DISK, Tier.HOST)]
    assert [c.block_hash for c in ups] == [h & MASK for h in waiting[0]]
    assert a.plan_prefetch(waiting) == []
    assert all(h in a.tiers.index.host for h in waiting[0]) and not a.tiers.pinned
    got = a.allocate(9, "t", prompts[0], waiting[0])
    assert got is not None and got.hit_tokens_by_tier[Tier.HOST] == 8
    a.release(got, prompts[0])
    a.check_integrity()
