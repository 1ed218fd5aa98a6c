"""Micro-benchmarks of the radix tree (printed, never asserted): ``python -m prism_cache.microbench``.

match + insert of a 4,096-token prompt at block size 16, on a tree already holding 200 prompts that share a
1,024-token system prefix: a full hit (match, touch, lock, re-insert from the locked node as release does: nothing new, unlock) and a miss past the
shared prefix (match, then insert of a new 3,072-token leaf). Block hashing (once per request, at enqueue) and
the two read-only lookups are timed beside them. The scheduling step is
``python -m router_py.scheduling.microbench`` (prism_cache cannot import the router).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

from prism_cache.allocator import RadixAllocator

BLOCK = 16
PROMPT = 4096
SYSTEM = 1024


def _time_us(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median and minimum microseconds of ``fn()``."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(samples), min(samples)


def _prompt(rng: random.Random, system: tuple[int, ...]) -> tuple[int, ...]:
    return system + tuple(rng.randrange(32000) for _ in range(PROMPT - SYSTEM))


def _populated(rng: random.Random, system: tuple[int, ...]) -> RadixAllocator:
    alloc = RadixAllocator(200 * PROMPT // BLOCK + 1024, BLOCK, "dart")
    for _ in range(200):
        prompt = _prompt(rng, system)
        got = alloc.allocate(PROMPT, "", prompt)
        assert got is not None
        alloc.release(got, prompt)
    return alloc


def _miss(alloc: RadixAllocator, rng: random.Random, system: tuple[int, ...]) -> float:
    """Microseconds of match + insert of a new prompt sharing only the system prefix."""
    prompt = _prompt(rng, system)
    hashes = alloc.hashes("", prompt)
    n_new = (PROMPT - SYSTEM) // BLOCK
    if alloc._pool.free_count < n_new:
        alloc._tree.evict(n_new, alloc._policy)
    blocks = alloc._pool.allocate(n_new)
    assert blocks is not None
    t0 = time.perf_counter()
    node, prefix = alloc._tree.match("", prompt)
    alloc._tree.insert("", prompt, prefix + blocks, hashes, (node, len(prefix)))
    elapsed = (time.perf_counter() - t0) * 1e6
    alloc._pool.unref_all(blocks)
    return elapsed


def main() -> None:
    rng = random.Random(0)
    system = tuple(rng.randrange(32000) for _ in range(SYSTEM))
    alloc = _populated(rng, system)
    tree = alloc._tree
    misses = [_miss(alloc, rng, system) for _ in range(500)]
    hit = _prompt(rng, system)  # cached after the misses, so the full hit below is one whatever the policy
    got = alloc.allocate(PROMPT, "", hit)
    assert got is not None
    alloc.release(got, hit)
    hashes, blocks = alloc.hashes("", hit), list(got.blocks[: PROMPT // BLOCK])
    assert tree.peek("", hit)[1] == PROMPT // BLOCK

    def match_insert_hit() -> None:
        node, _ = tree.match("", hit)
        tree.touch(node)
        tree.lock(node)
        tree.insert("", hit, blocks, hashes, (node, len(blocks)))  # release walks on from the locked match
        tree.unlock(node)

    sessions = alloc._demand.sessions
    assert sessions is not None
    rows = [
        ("match+insert, full hit", _time_us(match_insert_hit, 2000)),
        ("match+insert, miss past 1k", (statistics.median(misses), min(misses))),
        ("block hashes (once/request)", _time_us(lambda: alloc.hashes("", hit), 500)),
        ("popularity observe (once/req.)", _time_us(lambda: alloc.observe("", hit, hashes), 500)),
        ("session observe (once/req.)", _time_us(lambda: sessions.observe(hashes), 500)),
        ("cached prefix by hashes", _time_us(lambda: alloc.peek(hashes), 2000)),
        ("tree peek (read-only walk)", _time_us(lambda: tree.peek("", hit), 2000)),
    ]
    print(f"prism_cache microbench: block size {BLOCK}, {PROMPT}-token prompt, {tree.node_count()} nodes")
    for name, (median, best) in rows:
        print(f"  {name:30s}: median {median:7.1f} us, min {best:7.1f} us")


if __name__ == "__main__":
    main()
