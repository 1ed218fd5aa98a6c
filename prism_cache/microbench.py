"""Micro-benchmarks of the radix tree (printed, never asserted): ``python -m prism_cache.microbench``.

match + insert of a 4,096-token prompt at block size 16, on a tree already holding 200 prompts that share a
1,024-token system prefix: a full hit (match, touch, lock, re-insert from the locked node as release does: nothing new, unlock) and a miss past the
shared prefix (match, then insert of a new 3,072-token leaf). Block hashing (once per request, at enqueue) and
the two read-only lookups are timed beside them. The scheduling step is
``python -m router_py.scheduling.microbench`` (prism_cache cannot import the router).

``python -m prism_cache.microbench stalls [BLOCKS] [REQUESTS]``: the worst single call beside the mean, DART's
bounded tables being pruned (:func:`stalls`).
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
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


def stalls(num_blocks: int = 65536, requests: int = 4000, depth: int = 16) -> None:
    """Drive a DART allocator with RAG prompts (one of 4 system prompts, 7 zipf-drawn passages of 32 blocks
    out of 20,000, a question; 1-4 output tokens), ``depth`` waiting, and print the worst and mean enqueue and
    admit (dequeue, allocate, publish, release) calls, the garbage collector's pauses left out: the bounded
    tables' prunes run inside enqueue. Deterministic work; the times vary with the machine."""
    rng = random.Random(0)
    systems = [tuple(rng.randrange(32000) for _ in range(512)) for _ in range(4)]
    weights = [1 / (i + 1) ** 1.1 for i in range(20000)]
    alloc = RadixAllocator(num_blocks, BLOCK, "dart")
    waiting: list[tuple[tuple[int, ...], list[int]]] = []
    enq: list[float] = []
    adm: list[float] = []
    gc_time = [0.0, 0.0, 0.0]  # the collector's pauses so far, the longest, the start of the one running

    def collector(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_time[2] = time.perf_counter()
        else:
            pause = time.perf_counter() - gc_time[2]
            gc_time[0] += pause
            gc_time[1] = max(gc_time[1], pause)

    gc.callbacks.append(collector)  # NOTE: its pauses are the collector's, not the cache's: left out below
    for _ in range(requests):
        ids = rng.choices(range(20000), weights, k=7)
        prompt = rng.choice(systems) + tuple(t for i in ids for t in range(i * 512, i * 512 + 512))
        prompt += tuple(rng.randrange(32000) for _ in range(48))
        hashes = alloc.hashes("", prompt)
        t0, g0 = time.perf_counter(), gc_time[0]
        alloc.enqueue("", prompt, hashes)
        enq.append(time.perf_counter() - t0 - (gc_time[0] - g0))
        waiting.append((prompt, hashes))
        if len(waiting) > depth:
            prompt, hashes = waiting.pop(0)
            out = rng.randint(1, 4)
            t0, g0 = time.perf_counter(), gc_time[0]
            alloc.dequeue(hashes)
            with alloc.batch([hashes]):
                got = alloc.allocate(len(prompt) + out, "", prompt, hashes)
            assert got is not None
            alloc.cache_prompt(got, prompt, hashes)
            alloc.release(got, prompt, hashes)
            adm.append(time.perf_counter() - t0 - (gc_time[0] - g0))
    gc.callbacks.remove(collector)
    for name, xs in (("enqueue", enq), ("admit", adm)):
        print(f"  {name:8s}: worst {max(xs) * 1e3:7.2f} ms, mean {statistics.mean(xs) * 1e6:7.1f} us, "
              f"p99.9 {sorted(xs)[int(len(xs) * 0.999)] * 1e3:6.2f} ms over {len(xs)} calls")
    total, longest = gc_time[0], gc_time[1] * 1e3
    print(f"  (left out: the collector's pauses, {total:.2f} s in all, the longest {longest:.1f} ms)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["stalls"]:
        stalls(*map(int, sys.argv[2:]))
    else:
        main()
