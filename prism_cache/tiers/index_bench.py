"""The metadata index at scale (printed, never asserted): ``python -m prism_cache.tiers.index_bench
[--entries 10000000]``.

Fills the host tier's index with ``entries`` blocks as runs of 256 (4,096-token prompts at block size 16, each
demoted as one run), then times, one call at a time: a whole-prefix lookup of a stored chain (``prefix_run``:
the sequential case), a prefix broken in its middle, a miss, and one block's entry (``lookup``). Memory per
entry is the process's resident-set growth over the fill, divided by the entries (dict, keys, slots, the
per-slot arrays and the runs' hash lists).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from prism_cache.tiers.metadata_index import MetadataIndex

CHAIN = 256


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * 4096


def _time(fn: Callable[[int], object], n: int) -> tuple[float, float, float]:
    """Per-call p50 and p99 in microseconds, and calls per second, of ``fn(i)`` for i < n."""
    samples = []
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        fn(i)
        samples.append(clock() - t0)
    samples.sort()
    total = sum(samples) / 1e9
    return samples[n // 2] / 1e3, samples[n * 99 // 100] / 1e3, n / total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m prism_cache.tiers.index_bench")
    p.add_argument("--entries", type=int, default=10_000_000)
    p.add_argument("--calls", type=int, default=100_000)
    args = p.parse_args(argv)
    rng = random.Random(0)
    chains = args.entries // CHAIN
    before = _rss_bytes()
    index = MetadataIndex(chains * CHAIN, 0, block_bytes=16 * 131072)
    put = index.host.put
    for c in range(chains):
        run = [rng.getrandbits(63) - (1 << 62) for _ in range(CHAIN)]  # one evicted node's tail
        for i, h in enumerate(run):
            put(h, c * CHAIN + i, 1.0, run=run, offset=i)
    per_entry = (_rss_bytes() - before) / (chains * CHAIN)
    hashes = index.host.hash_at
    probe = [hashes[c * CHAIN : (c + 1) * CHAIN].tolist() for c in rng.sample(range(chains), min(chains, 2000))]
    # NOTE: fresh int objects, as a request's own hashes are (no identity shortcut in the comparisons)
    broken = [chain[: CHAIN // 2] + [rng.getrandbits(62)] + chain[CHAIN // 2 + 1 :] for chain in probe]
    k = len(probe)
    run = index.prefix_run
    rows = [
        ("prefix, whole chain (256 blocks)", lambda i: run(probe[i % k], 0, CHAIN)),
        ("prefix, broken at block 128", lambda i: run(broken[i % k], 0, CHAIN)),
        ("prefix, miss", lambda i: run([i], 0, 1)),
        ("one block's entry", lambda i: index.lookup(probe[i % k][i % CHAIN])),
    ]
    print(f"metadata index: {chains * CHAIN:,} entries, {per_entry:.1f} B/entry (RSS growth)")
    for name, fn in rows:
        p50, p99, rate = _time(fn, args.calls)
        print(f"  {name:<34}: p50 {p50:6.2f} us, p99 {p99:6.2f} us, {rate:,.0f} lookups/s")
    assert all(run(c, 0, CHAIN) == CHAIN for c in probe[:10]), "a stored chain was not found whole"
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
