"""Radix tree structure, namespaces, pool, statistics and the Belady bound."""

from __future__ import annotations

import random

import pytest

from prism_cache import Allocation, BlockPool, CacheStats, RadixAllocator
from prism_cache.belady import belady_hits
from prism_cache.stats import MAX_NAMESPACES


def test_pool_reserves_block_zero_and_refuses_negative_counts() -> None:
    pool = BlockPool(4)
    assert pool.allocate(4) is None and pool.allocate(3) == [1, 2, 3]
    pool.ref(2)
    assert not pool.unref(2) and pool.unref(2) and pool.free_count == 1
    with pytest.raises(ValueError):
        pool.unref(2)
    pool.check_integrity()


def test_match_splits_inside_a_node_and_keeps_the_lower_handle() -> None:
    a = RadixAllocator(16, 2, "lru")
    first = a.allocate(6, "", (1, 1, 2, 2, 3, 3))
    assert first is not None
    a.release(first, (1, 1, 2, 2, 3, 3))
    (leaf,) = list(a._tree.nodes())
    second = a.allocate(6, "", (1, 1, 2, 2, 9, 9))
    assert second is not None and second.prefix_len == 4
    assert second.node is not None and second.node is leaf.parent
    assert leaf.tokens == (3, 3) and leaf.lock == 0 and second.node.lock == 1
    a.release(second, (1, 1, 2, 2, 9, 9))
    assert a._tree.node_count() == 3
    a.check_integrity()


def test_namespaces_never_share_nodes() -> None:
    a = RadixAllocator(32, 2, "dart")
    prompt = (1, 1, 2, 2)
    for ns in ("tenant-a", "tenant-b"):
        got = a.allocate(5, ns, prompt)
        assert got is not None and got.prefix_len == 0
        a.release(got, prompt)
    blocks_by_ns = {ns: [b for n in _nodes_of(a, ns) for b in n] for ns in ("tenant-a", "tenant-b")}
    assert len(blocks_by_ns["tenant-a"]) == 2 and not set(blocks_by_ns["tenant-a"]) & set(
        blocks_by_ns["tenant-b"]
    )
    again = a.allocate(5, "tenant-b", prompt)
    assert (
        again is not None and again.prefix_len == 4 and set(again.blocks[:2]) == set(blocks_by_ns["tenant-b"])
    )
    assert a._tree.peek("tenant-c", prompt) == (None, 0)
    a.check_integrity()


@pytest.mark.parametrize("policy", ["lru", "dart"])
def test_namespace_roots_follow_what_is_cached_not_every_namespace_served(policy: str) -> None:
    """A namespace per request (a cache_salt per user or per request) over a small pool: the tree keeps a root
    only while the namespace has cached nodes. Before, every namespace ever served kept its root for good."""
    a = RadixAllocator(17, 2, policy)
    for i in range(3000):
        ns, prompt = f"salt-{i}", (i % 7, i % 5, 1, 2)
        got = a.allocate(5, ns, prompt)
        assert got is not None
        a.release(got, prompt)
    assert len(a._tree._roots) <= a._tree.node_count() <= 16
    a.check_integrity()


def test_an_insert_after_its_namespace_root_was_dropped_hangs_from_the_kept_root() -> None:
    """A request that missed holds its namespace's root; when eviction empties the namespace (the root is
    dropped) before it publishes its prompt, its nodes go under the namespace's root made anew, so the tree,
    its head index and later matches stay whole."""
    a = RadixAllocator(5, 2, "lru")  # 4 usable blocks
    first = a.allocate(4, "ns", (1, 1, 2, 2))
    assert first is not None
    a.release(first, (1, 1, 2, 2))
    missed = a.allocate(2, "ns", (7, 7))  # one block: the root is its node; 3 blocks free or evictable
    assert missed is not None and missed.prefix_len == 0
    other = a.allocate(6, "other", (3, 3, 4, 4, 5, 5))  # evicts all of "ns"
    assert other is not None and "ns" not in a._tree._roots and missed.node not in a._tree._roots.values()
    a.release(other, (3, 3, 4, 4, 5, 5))
    a.release(missed, (7, 7))
    again = a.allocate(3, "ns", (7, 7, 8))
    assert again is not None and again.prefix_len == 2
    a.release(again, (7, 7, 8))
    a.check_integrity()


def test_stats_keep_the_most_recent_namespaces() -> None:
    stats = CacheStats()
    for i in range(MAX_NAMESPACES + 500):
        stats.record(f"salt-{i}", 10, 1)
        stats.record("steady", 10, 5)
    n = MAX_NAMESPACES + 500
    assert len(stats.by_namespace) == MAX_NAMESPACES and stats.by_namespace["steady"].hit == 5 * n
    assert "salt-0" not in stats.by_namespace and stats.total.queried == 20 * n


def _nodes_of(a: RadixAllocator, namespace: str) -> list[list[int]]:
    stack, out = [a._tree.root(namespace)], []
    while stack:
        node = stack.pop()
        out.append(node.blocks)
        stack.extend(node.children.values())
    return out


def test_stats_per_namespace_and_total() -> None:
    stats = CacheStats()
    stats.record("a", 10, 4)
    stats.record("b", 10, 0)
    assert (stats.total.queried, stats.total.hit, stats.by_namespace["a"].hit_rate) == (20, 4, 0.4)
    with pytest.raises(ValueError):
        stats.record("a", 3, 4)


def test_belady_evicts_the_furthest_next_use() -> None:
    seq = [[("a", 1)], [("b", 1)], [("c", 1)], [("a", 1)], [("b", 1)], [("c", 1)], [("a", 1)]]
    # capacity 2: after c arrives, keep a and b (used next), drop c; then a, b hit; c misses, a hits
    assert belady_hits(seq, 2) == [0, 0, 0, 1, 1, 0, 1]


def test_belady_counts_only_the_exact_prefix_and_evicts_tails_first() -> None:
    seq = [[("p", 2), ("x", 2)], [("p", 2), ("y", 2)], [("p", 2), ("x", 2)]]
    assert belady_hits(seq, 4) == [0, 2, 4]
    assert belady_hits([[("q", 1), ("r", 1)], [("z", 1), ("r", 1)]], 4) == [0, 0]


@pytest.mark.parametrize("policy", ["lru", "lfu", "lookahead-lru", "dart"])
def test_batched_evictions_match_one_scan_per_eviction(policy: str) -> None:
    """A batch's shared eviction heap evicts exactly what a fresh scan per eviction would."""
    rng = random.Random(7)
    plain, batched = RadixAllocator(40, 2, policy), RadixAllocator(40, 2, policy)
    live: list[tuple[Allocation, Allocation, tuple[int, ...]]] = []
    for _ in range(400):
        group = [tuple(rng.randint(0, 1) for _ in range(rng.randint(2, 12))) for _ in range(3)]
        with batched.batch():
            for prompt in group:
                a, b = (
                    plain.allocate(len(prompt) + 1, "", prompt),
                    batched.allocate(len(prompt) + 1, "", prompt),
                )
                assert (a is None) == (b is None)
                if a is not None and b is not None:
                    assert a.blocks == b.blocks
                    if rng.random() < 0.2:
                        plain.rollback(a)
                        batched.rollback(b)
                    else:
                        live.append((a, b, prompt))
        while len(live) > 3:
            a, b, prompt = live.pop(rng.randrange(len(live)))
            plain.release(a, prompt)
            batched.release(b, prompt)
        assert plain.check_integrity() == batched.check_integrity()
    assert batched._tree.evicted_blocks == plain._tree.evicted_blocks > 0


def test_cached_prefix_from_hashes_agrees_with_the_token_walk_through_splits_and_cuts() -> None:
    """The node-to-node walk over block hashes (ranking) and the token walk (``peek``) count the same cached
    blocks while inserts split nodes and evictions cut them (cut nodes keep a stale token tail until read)."""
    rng = random.Random(1)
    a = RadixAllocator(40, 2, "dart")
    heads = [tuple(rng.randrange(3) for _ in range(rng.randint(0, 10))) for _ in range(4)]
    for _ in range(2000):
        ns = rng.choice(["", "t"])
        prompt = rng.choice(heads) + tuple(rng.randrange(3) for _ in range(rng.randint(1, 12)))
        assert a._tree.cached_prefix_blocks(a.hashes(ns, prompt)) == a._tree.peek(ns, prompt)[1]
        got = a.allocate(len(prompt) + 1, ns, prompt)
        if got is not None:
            a.release(got, prompt)
        a.check_integrity()
    assert a._tree.evicted_blocks > 500
