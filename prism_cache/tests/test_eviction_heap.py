"""The persistent eviction heap (prism_cache.eviction_index) against one rebuilt from all leaves at each sync."""

from __future__ import annotations

import random

import pytest

from prism_cache import RadixAllocator, sweep
from prism_cache.allocator import Allocation
from prism_cache.policies import POLICY_NAMES

BS = 2


def _allocator(policy: str, half_life: float = 3.0) -> RadixAllocator:
    # small popularity bounds, so that the churn prunes its contents (a short half-life) or positions (a long one)
    a = RadixAllocator(48, BS, policy, params={"dart_heat_half_life": half_life})
    if a._demand.popularity is not None:
        pop = a._demand.popularity
        pop._bound = pop._content_limit = pop._path_limit = 6
    if a._demand.sessions is not None:
        a._demand.sessions._bound = a._demand.sessions._limit = 6
    return a


def _rebuilding(policy: str, half_life: float = 3.0) -> RadixAllocator:
    """The reference: every sync rebuilds the heap over all unlocked leaves (the brute-force order)."""
    a = _allocator(policy, half_life)
    a._tree._index._sync = a._tree._index._start_heap  # type: ignore[method-assign]
    return a


def _prompt(rng: random.Random) -> tuple[int, ...]:
    head = rng.choice([(1, 1, 2, 2), (3, 3), (1, 1, 4, 4, 5, 5), ()])
    return head + tuple(rng.randrange(3) for _ in range(rng.randint(1, 12)))


class _Churn:
    """One random operation at a time, replayed identically on several allocators."""

    def __init__(self, allocs: list[RadixAllocator]) -> None:
        self.allocs = allocs
        self.live: list[tuple[tuple[int, ...], list[Allocation | None]]] = []
        self.queued: list[list[list[int]]] = []

    def step(self, rng: random.Random) -> None:
        op = rng.random()
        if op < 0.35 and len(self.live) < 4:  # few live requests, so most of the cache is evictable
            self._batch(rng, [_prompt(rng) for _ in range(rng.randint(1, 3))])
        elif op < 0.6 and self.live:
            prompt, allocs = self.live.pop(rng.randrange(len(self.live)))
            done = rng.random() < 0.8
            for a, got in zip(self.allocs, allocs):
                if got is not None:
                    a.release(got, prompt) if done else a.rollback(got)
        elif op < 0.7 and self.live:
            prompt, allocs = rng.choice(self.live)
            for a, got in zip(self.allocs, allocs):
                if got is not None:
                    a.cache_prompt(got, prompt, a.hashes("", prompt))
        elif op < 0.85:
            self._demand(rng)
        else:
            n = rng.randint(1, 6)
            assert len({a._tree.evict(n, a._policy) for a in self.allocs}) == 1

    def _batch(self, rng: random.Random, prompts: list[tuple[int, ...]]) -> None:
        """Plan prompts (planned demand), allocate them in one batch, then clear the plan."""
        hashes = [[a.hashes("", p) for p in prompts] for a in self.allocs]
        for a, hs in zip(self.allocs, hashes):
            for h in hs:
                a._demand.planned.add(h)
        for prompt in prompts:
            tokens, got = len(prompt) + rng.randint(0, 3), []
            for a in self.allocs:
                with a.batch():
                    got.append(a.allocate(tokens, "", prompt))
            self.live.append((prompt, got))
        for a, hs in zip(self.allocs, hashes):
            for h in hs:
                a._demand.planned.remove(h)

    def _demand(self, rng: random.Random) -> None:
        if self.queued and rng.random() < 0.5:
            for a, h in zip(self.allocs, self.queued.pop(rng.randrange(len(self.queued)))):
                a.dequeue(h)
                a._demand.lookahead.remove(h)
            return
        prompt = _prompt(rng)
        entry = [a.hashes("", prompt) for a in self.allocs]
        for a, h in zip(self.allocs, entry):
            a.enqueue("", prompt, h)  # queued demand, popularity and session return, as a scheduler's
            a._demand.lookahead.add(h)
        self.queued.append(entry)


@pytest.mark.parametrize("policy", POLICY_NAMES)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("half_life", [0.05, 3.0])
def test_persistent_heap_evicts_exactly_like_a_rebuilt_one(policy: str, seed: int, half_life: float) -> None:
    rng = random.Random(seed)
    fast, ref = _allocator(policy, half_life), _rebuilding(policy, half_life)
    churn = _Churn([fast, ref])
    for _ in range(3000):
        churn.step(rng)
        assert fast.check_integrity() == ref.check_integrity()
        assert fast._tree.evicted_blocks == ref._tree.evicted_blocks
        assert fast._pool.free_count == ref._pool.free_count
    assert fast._tree.evicted_blocks > 500  # the cache was full most of the time
    if fast._demand.popularity is not None:
        pop = fast._demand.popularity  # records were dropped along the way
        assert (pop.dropped_contents if half_life < 1 else pop.dropped_positions) > 0
    if fast._demand.sessions is not None:
        assert fast._demand.sessions._pruned_at > 0  # session records were pruned along the way


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("half_life", [0.05, 3.0])
def test_persistent_heap_stays_exact_while_prunes_run_in_slices(
    monkeypatch: pytest.MonkeyPatch, seed: int, half_life: float
) -> None:
    monkeypatch.setattr(sweep, "SLICE", 1)  # a prune spans several calls, records dropped between evictions
    monkeypatch.setattr(sweep, "PER_BLOCK", 1)
    rng = random.Random(seed)
    fast, ref = _allocator("dart", half_life), _rebuilding("dart", half_life)
    churn, sliced = _Churn([fast, ref]), 0
    for _ in range(3000):
        churn.step(rng)
        assert fast.check_integrity() == ref.check_integrity()
        assert fast._tree.evicted_blocks == ref._tree.evicted_blocks
        sessions, pop = fast._demand.sessions, fast._demand.popularity
        assert sessions is not None and pop is not None
        sliced += sessions._sweep is not None or pop._path_sweep is not None or pop._content_sweep is not None
    assert fast._tree.evicted_blocks > 500 and sliced > 100
    assert (pop.dropped_contents if half_life < 1 else pop.dropped_positions) > 0


@pytest.mark.parametrize("seed", range(3))
def test_planned_demand_counted_at_the_first_eviction_evicts_like_counting_it_up_front(seed: int) -> None:
    """``batch(planned)`` counts the plan only when the batch first evicts (and clears it at the end): the
    same allocations as adding the plan before the batch and removing it after."""
    rng = random.Random(seed)
    eager, lazy = RadixAllocator(48, BS, "dart"), RadixAllocator(48, BS, "dart")
    live: list[tuple[tuple[int, ...], Allocation | None, Allocation | None]] = []
    for _ in range(2000):
        op = rng.random()
        if op < 0.4 and len(live) < 4:
            prompts = [_prompt(rng) for _ in range(rng.randint(1, 3))]
            plan = [eager.hashes("", p) for p in prompts]
            sizes = [len(p) + rng.randint(0, 3) for p in prompts]
            for h in plan:
                eager._demand.planned.add(h)
            with eager.batch():
                got_eager = [eager.allocate(n, "", p) for n, p in zip(sizes, prompts)]
            for h in plan:
                eager._demand.planned.remove(h)
            evicted = lazy._tree.evicted_blocks
            with lazy.batch(plan):
                got_lazy = [lazy.allocate(n, "", p) for n, p in zip(sizes, prompts)]
                assert bool(len(lazy._demand.planned)) == (lazy._tree.evicted_blocks > evicted and any(plan))
            assert [g and g.blocks for g in got_eager] == [g and g.blocks for g in got_lazy]
            assert not len(lazy._demand.planned)
            live += zip(prompts, got_eager, got_lazy)
        elif op < 0.8 and live:
            prompt, *pair = live.pop(rng.randrange(len(live)))
            for a, got in zip((eager, lazy), pair):
                if got is not None:
                    a.release(got, prompt)
        else:
            h = eager.hashes("", _prompt(rng))
            for a in (eager, lazy):
                a._demand.queued.add(h)
        assert eager.check_integrity() == lazy.check_integrity()
        assert eager._tree.evicted_blocks == lazy._tree.evicted_blocks
    assert lazy._tree.evicted_blocks > 300
