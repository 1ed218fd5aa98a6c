"""Segment popularity (prism_cache.popularity) and DART's use of it."""

from __future__ import annotations

import pytest

from prism_cache import RadixAllocator, sweep
from prism_cache.hashing import block_hashes
from prism_cache.popularity import UNSEEN, SegmentPopularity

BS = 2
SYS, HOT, COLD, OTHER = (1, 1), (2, 2, 2, 3), (4, 4, 4, 5), (6, 6)


def _pop(capacity: int = 100, kept: frozenset[int] = frozenset(), half_life: float = 3.0) -> SegmentPopularity:
    return SegmentPopularity(capacity, half_life, BS, lambda: kept)


def _observe(p: SegmentPopularity, prompt: tuple[int, ...], namespace: str = "") -> list[int]:
    hashes = block_hashes(namespace, prompt, BS)
    p.observe(namespace, prompt, hashes)
    return hashes


def test_contents_count_wherever_they_sit_and_a_path_is_as_popular_as_its_weakest_block() -> None:
    p = _pop()
    _observe(p, OTHER + HOT)  # HOT retrieved twice elsewhere, at other positions
    _observe(p, OTHER + OTHER + HOT)
    hot = _observe(p, SYS + HOT)
    cold = _observe(p, SYS + COLD)
    assert p.value(hot[-1]) > p.value(cold[-1])
    assert p.value(hot[0]) == p.value(cold[0])  # the same system block, counted twice by now
    tail = _observe(p, SYS + HOT + COLD + HOT)  # popular again after a cold block: still the cold block's value
    values = [p.value(h) for h in tail]
    assert values == sorted(values, reverse=True)
    assert values[-1] == values[3] == p.value(cold[-1])


def test_a_position_gains_when_its_weakest_content_is_retrieved_elsewhere_and_watchers_hear_of_it() -> None:
    p = _pop()
    changed: set[int] = set()
    p.watch(changed)
    _observe(p, SYS)
    cold = _observe(p, SYS + COLD)  # COLD, seen once, is the weakest block of this path
    before = p.value(cold[-1])
    changed.clear()
    _observe(p, OTHER + COLD)
    assert p.value(cold[-1]) > before
    assert cold[-1] in changed  # so the radix tree re-keys a leaf ending there


def test_namespaces_never_share_counts() -> None:
    p = _pop()
    _observe(p, HOT, "tenant-a")
    a = _observe(p, HOT, "tenant-a")
    b = _observe(p, HOT, "tenant-b")  # one use, the newest
    assert p.value(a[-1]) > p.value(b[-1])
    assert p.value(block_hashes("tenant-c", SYS, BS)[0]) == UNSEEN


@pytest.mark.parametrize("half_life", [3.0, 1000.0])
def test_tables_stay_bounded_and_keep_what_is_cached_or_waiting(half_life: float) -> None:
    kept = frozenset(block_hashes("", SYS + HOT, BS))
    p = _pop(capacity=8, kept=kept, half_life=half_life)
    _observe(p, SYS + HOT)
    for i in range(5000):  # unique prompts, each used once
        _observe(p, (10 + i, 10 + i, 20000 + i, 20000 + i, 7, 7))
    assert len(p) < 3 * p._bound
    if half_life < 10:  # contents decay within the run: dropped with their records
        assert p.dropped_contents > 0 and len(p._content) < 3 * p._bound
    else:  # they do not: the positions go, as neither cached nor waiting
        assert p.dropped_positions > 0
    assert all(p.value(h) > UNSEEN for h in kept)


@pytest.mark.parametrize("half_life", [0.05, 1000.0])
def test_a_prune_sweeps_a_slice_per_observed_request_and_notifies_each_drop(
    monkeypatch: pytest.MonkeyPatch, half_life: float
) -> None:
    monkeypatch.setattr(sweep, "SLICE", 4)
    monkeypatch.setattr(sweep, "PER_BLOCK", 1)
    kept = frozenset(block_hashes("", SYS + HOT, BS))
    p = _pop(capacity=8, kept=kept, half_life=half_life)  # contents decay within the run, or not at all
    p._bound = p._content_limit = p._path_limit = 40
    changed: set[int] = set()
    p.watch(changed)
    _observe(p, SYS + HOT)
    sliced, since = 0, set()  # calls that swept a slice; positions written since the last records' prune began
    for i in range(400):
        idle = p._path_sweep is None
        dropped, recorded = (p.dropped_positions, p.dropped_contents), set(p._path)
        changed.clear()
        hashes = _observe(p, (10 + i, 10 + i, 20000 + i, 20000 + i, 7, 7))  # 3 blocks, used once
        assert p.dropped_positions - dropped[0] <= 4 + 3 and p.dropped_contents - dropped[1] <= 4 + 3
        lost = recorded - set(p._path)
        assert lost <= changed and all(p.value(h) == UNSEEN for h in lost)  # every drop notified
        sliced += p._path_sweep is not None or p._content_sweep is not None
        since = set(hashes) if idle and p._path_sweep is not None else since | set(hashes)
    assert sliced > 100 and p.dropped_positions + p.dropped_contents > 100  # the prunes ran over many calls
    assert all(p.value(h) > UNSEEN for h in kept)
    if half_life > 10:  # no content decays: what was written since the last prune began stays
        assert p.dropped_contents == 0 and all(p.value(h) > UNSEEN for h in since)


def _dart(**params: float) -> RadixAllocator:
    return RadixAllocator(64, BS, "dart", params=params)


def _serve(a: RadixAllocator, prompt: tuple[int, ...]) -> None:
    """A request enters the queue (observed), runs and is cached."""
    a.observe("", prompt, a.hashes("", prompt))
    got = a.allocate(len(prompt) + 1, "", prompt)
    assert got is not None
    a.release(got, prompt)


def test_dart_keeps_the_once_used_tail_made_of_widely_retrieved_blocks() -> None:
    for weight in (4.0, 0.0):
        a = _dart(dart_popularity_weight=weight)
        a.observe("", OTHER + HOT, a.hashes("", OTHER + HOT))  # HOT was retrieved elsewhere (never cached there)
        _serve(a, SYS + HOT)
        _serve(a, SYS + COLD)  # newer: with equal heat, recency keeps COLD
        assert a._tree.evict(2, a._policy) == 2
        hot, cold = a._tree.peek("", SYS + HOT)[1], a._tree.peek("", SYS + COLD)[1]
        assert (hot, cold) == ((3, 1) if weight else (1, 3))  # without popularity, the older tail goes first
    assert a._demand.popularity is None  # weight 0: not even counted
