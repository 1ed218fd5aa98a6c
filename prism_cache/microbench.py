"""Micro-benchmarks of the radix tree (printed, never asserted): ``python -m prism_cache.microbench``.

match + insert of a 4,096-token prompt at block size 16, on a tree already holding 200 prompts that share a
1,024-token system prefix: a full hit (match, touch, lock, unlock, re-insert: nothing new) and a miss past the
shared prefix (match, then insert of a new 3,072-token leaf). Block hashing, done once per request at enqueue,
is timed separately. The scheduling step is in ``python -m router_py.schedulers.microbench``.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

from prism_cache.allocator import RadixAllocator

BLOCK = 16
PROMPT = 4096


def _time_us(fn: Callable[[], None], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(samples)


def _populated(rng: random.Random) -> tuple[RadixAllocator, tuple[int, ...]]:
    alloc = RadixAllocator(200 * PROMPT // BLOCK + 1024, BLOCK, "dart")
    system = tuple(rng.randrange(32000) for _ in range(1024))
    for _ in range(200):
        prompt = system + tuple(rng.randrange(32000) for _ in range(PROMPT - 1024))
        got = alloc.allocate(PROMPT, "", prompt)
        assert got is not None
        alloc.release(got, prompt)
    return alloc, system


def main() -> None:
    rng = random.Random(0)
    alloc, system = _populated(rng)
    tree = alloc.tree
    hit = system + tuple(rng.randrange(32000) for _ in range(PROMPT - 1024))
    got = alloc.allocate(PROMPT, "", hit)
    assert got is not None
    alloc.release(got, hit)
    hit_hashes = alloc.hashes("", hit)
    hit_blocks = list(got.blocks[: PROMPT // BLOCK])

    def match_insert_hit() -> None:
        node, _ = tree.match("", hit)
        tree.touch(node)
        tree.lock(node)
        tree.unlock(node)
        tree.insert("", hit, hit_blocks, hit_hashes)

    def match_insert_miss() -> None:
        prompt = system + tuple(rng.randrange(32000) for _ in range(PROMPT - 1024))
        blocks = alloc.pool.allocate(PROMPT // BLOCK - 64)
        if blocks is None:
            tree.evict(PROMPT // BLOCK, alloc.policy)
            blocks = alloc.pool.allocate(PROMPT // BLOCK - 64)
        assert blocks is not None
        hashes = alloc.hashes("", prompt)
        t0 = time.perf_counter()
        node, prefix = tree.match("", prompt)
        tree.insert("", prompt, prefix + blocks, hashes)
        miss_samples.append((time.perf_counter() - t0) * 1e6)
        for b in blocks:
            alloc.pool.unref(b)

    miss_samples: list[float] = []
    print(f"prism_cache microbench (block size {BLOCK}, {PROMPT}-token prompt, {tree.node_count()} nodes)")
    print(f"  match+insert, full hit      : {_time_us(match_insert_hit, 2000):8.1f} us (median)")
    for _ in range(500):
        match_insert_miss()
    print(f"  match+insert, miss past 1k  : {statistics.median(miss_samples):8.1f} us (median)")
    print(f"  block hashes (once/request) : {_time_us(lambda: None if alloc.hashes('', hit) else None, 500):8.1f} us")
    print(f"  peek (read-only match)      : {_time_us(lambda: None if tree.peek('', hit) else None, 2000):8.1f} us")


if __name__ == "__main__":
    main()
