"""Exact eviction order for every retention policy."""

from __future__ import annotations

from collections.abc import Mapping

from prism_cache import RadixAllocator

BS = 2


def _alloc(policy: str, num_blocks: int = 32, **params: float) -> RadixAllocator:
    return RadixAllocator(num_blocks, BS, policy, params=params)


def _use(a: RadixAllocator, prompt: tuple[int, ...]) -> None:
    """One request with ``prompt``: allocate (matching), then release (inserting)."""
    alloc = a.allocate(len(prompt), "", prompt)
    assert alloc is not None
    a.release(alloc, prompt)


def _cached(a: RadixAllocator, prompts: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    return {name: a._tree.peek("", p)[1] for name, p in prompts.items()}


def _evict_one_by_one(a: RadixAllocator, prompts: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Evict a block at a time; for each block, the prompt (no two share a block) whose cached length drops."""
    order: list[str] = []
    before = _cached(a, prompts)
    while a._tree.cached_blocks:
        assert a._tree.evict(1, a._policy) == 1
        after = _cached(a, prompts)
        (dropped,) = [n for n in prompts if after[n] < before[n]]
        order.append(dropped)
        before = after
    return order


A, B, C, D = (1, 1), (2, 2), (3, 3), (4, 4)
SINGLE = {"A": A, "B": B, "C": C}


def test_lru_evicts_least_recently_used_first() -> None:
    a = _alloc("lru")
    for p in (A, B, C, A):
        _use(a, p)
    assert _evict_one_by_one(a, SINGLE) == ["B", "C", "A"]


def test_lru_cuts_a_leaf_from_its_tail_and_keeps_the_shared_parent() -> None:
    a = _alloc("lru")
    long, other = (5, 5, 6, 6, 7, 7), (5, 5, 8, 8)
    _use(a, long)
    _use(a, other)
    _use(a, A)
    assert a._tree.evict(1, a._policy) == 1
    assert a._tree.peek("", long)[1] == 2 and a._tree.peek("", other)[1] == 2
    assert a._tree.evict(2, a._policy) == 2  # the rest of `long`, then `other`'s own block
    assert a._tree.peek("", long)[1] == 1 and a._tree.peek("", other)[1] == 1
    assert a._tree.peek("", A)[1] == 1


def test_lfu_evicts_least_used_then_oldest() -> None:
    a = _alloc("lfu")
    for p in (A, A, A, B, C, C, D):
        _use(a, p)
    assert _evict_one_by_one(a, {**SINGLE, "D": D}) == ["B", "D", "C", "A"]


def test_hotprefix_ranks_frequency_per_length() -> None:
    a = _alloc("hotprefix", hotprefix_max_age=0)
    long = (9, 9, 8, 8, 7, 7, 6, 6)
    for p in (long, long, long, A, A, B):
        _use(a, p)
    # reuses per block: B 0/1, long 2/4 (2/3, 2/2, 2/1 as its tail goes), A 1/1; ties go to the older node
    order = _evict_one_by_one(a, {"long": long, "A": A, "B": B})
    assert order == ["B", "long", "long", "long", "A", "long"]


def test_hotprefix_clock_decays_with_age() -> None:
    a = _alloc("hotprefix", hotprefix_max_age=4, hotprefix_decay_period=2)
    _use(a, A)
    _use(a, A)  # A: 1 reuse, clock 4
    a._tree.tick += 40  # time passes: A's clock decays to 0
    _use(a, B)  # B: no reuse, fresh clock 4
    assert _evict_one_by_one(a, {"A": A, "B": B}) == ["A", "B"]
    lfu = _alloc("lfu")
    for p in (A, A, B):
        _use(lfu, p)
    assert _evict_one_by_one(lfu, {"A": A, "B": B}) == ["B", "A"]


def test_lookahead_lru_protects_the_window() -> None:
    a = _alloc("lookahead-lru")
    for p in (A, B, C):
        _use(a, p)
    a._demand.lookahead.add(a.hashes("", A))
    assert _evict_one_by_one(a, SINGLE) == ["B", "C", "A"]


def test_dart_orders_by_planned_then_queued_demand_before_any_history() -> None:
    a = _alloc("dart")
    for p in (A, B, C, D):
        _use(a, p)
    a._demand.planned.add(a.hashes("", A))
    a._demand.queued.add(a.hashes("", B))
    a._demand.queued.add(a.hashes("", B))
    a._demand.queued.add(a.hashes("", C))
    assert _evict_one_by_one(a, {**SINGLE, "D": D}) == ["D", "C", "B", "A"]


def test_dart_never_evicts_active_nodes_and_cuts_undemanded_tails_first() -> None:
    a = _alloc("dart", num_blocks=8)
    prompt = (1, 1, 2, 2, 3, 3)
    _use(a, prompt)
    a._demand.queued.add(a.hashes("", prompt)[:1])  # a waiting request needs only the first block
    held = a.allocate(2, "", (4, 4))  # active, not cached yet
    assert held is not None
    assert a._tree.evict(2, a._policy) == 2
    assert a._tree.peek("", prompt)[1] == 1
    running = a.allocate(2, "", (1, 1, 9))  # locks the first block
    assert running is not None and running.prefix_len == 2
    assert a._tree.evict(5, a._policy) == 0
    a.check_integrity()


def test_dart_ranks_undemanded_nodes_by_decayed_uses_then_keeps_demand_on_top() -> None:
    a = _alloc("dart")
    for p in (A, A, A, B, C, D):
        _use(a, p)
    # A is the least recent (LRU would evict it first) but has 3 uses against 1 each
    assert _evict_one_by_one(a, {**SINGLE, "D": D}) == ["B", "C", "D", "A"]
    a = _alloc("dart")
    for p in (A, A, A, B, C):
        _use(a, p)
    a._demand.queued.add(a.hashes("", C))  # one waiting request outranks any history
    assert _evict_one_by_one(a, SINGLE) == ["B", "A", "C"]


def test_dart_evicts_long_single_use_tails_before_short_ones_per_block() -> None:
    a = _alloc("dart", dart_length_penalty=1.0)
    long = (9, 9, 8, 8, 7, 7, 6, 6)
    _use(a, A)
    _use(a, long)  # newer, but 1 use over 4 blocks: its tail ranks below A's single block
    assert _evict_one_by_one(a, {"long": long, "A": A}) == ["long", "long", "long", "A", "long"]


def test_dart_heat_decays_with_the_blocks_inserted_since() -> None:
    a = _alloc("dart", dart_heat_half_life=0.1)  # a use counts half after ~3 inserted blocks
    _use(a, A)
    _use(a, A)  # 2 uses
    a._tree.inserted_blocks += 100  # the cache has turned over many times since
    _use(a, B)  # 1 fresh use now outweighs A's 2 old ones
    assert _evict_one_by_one(a, {"A": A, "B": B}) == ["A", "B"]
    a = _alloc("dart")  # with the default half-life (3 capacities) the 2 uses still win
    _use(a, A)
    _use(a, A)
    a._tree.inserted_blocks += 10
    _use(a, B)
    assert _evict_one_by_one(a, {"A": A, "B": B}) == ["B", "A"]
