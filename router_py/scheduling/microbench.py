"""Micro-benchmark of one scheduling step with 1,000 requests waiting (printed, never asserted):
``python -m router_py.scheduling.microbench``.

1,000 waiting requests of 1,024-2,048 tokens drawn from 50 shared 512-token segments (Zipf-like reuse), block
size 16. Each step is one ``next_batch`` (4,096-token prefill budget) followed, off the clock, by releasing what
it admitted and enqueueing as many new requests, so the queue stays at 1,000. Two memory sizes: 200,000 blocks
(the steps measured never evict: scheduling plus allocation) and 20,000 blocks (full: every admission evicts,
which first re-keys the leaves whose rank changed since the last eviction in the tree's persistent heap).
"""

from __future__ import annotations

import random
import statistics
import time

from router_py.scheduling.registry import make_scheduler
from router_py.scheduling.interface import SchedRequest, SchedulerConfig

WAITING = 1000
COMBOS = (("fcfs", "lru"), ("lpm", "lru"), ("dfs-weight", "lru"), ("qas", "lookahead-lru"), ("qas", "dart"))


def _request(rng: random.Random, rid: int, segments: list[tuple[int, ...]]) -> SchedRequest:
    head = segments[min(int(rng.paretovariate(1.2)) - 1, len(segments) - 1)]
    tail = tuple(rng.randrange(32000) for _ in range(rng.randint(512, 1536)))
    return SchedRequest(rid, head + tail, 16, rid * 0.001)


def bench(scheduler: str, policy: str, num_blocks: int, steps: int = 200) -> tuple[float, float]:
    """Median and minimum microseconds of one next_batch with WAITING requests waiting."""
    rng = random.Random(0)
    segments = [tuple(rng.randrange(32000) for _ in range(512)) for _ in range(50)]
    s = make_scheduler(SchedulerConfig(scheduler, policy, num_blocks=num_blocks, block_size=16))
    rid = 0
    for _ in range(WAITING):
        s.enqueue(_request(rng, rid, segments), rid * 0.001)
        rid += 1
    samples = []
    for _ in range(steps):
        t0 = time.perf_counter()
        plan = s.next_batch(rid * 0.001, 4096, 1_000_000)
        samples.append((time.perf_counter() - t0) * 1e6)
        for adm in plan.admissions if plan else []:
            s.release(adm.request.id)
            s.enqueue(_request(rng, rid, segments), rid * 0.001)
            rid += 1
    return statistics.median(samples), min(samples)


def main() -> None:
    print(f"scheduling step with {WAITING} waiting (block size 16, prefill budget 4096), microseconds")
    print(f"  {'':22s}   no eviction (median/min)   cache full (median/min)")
    for scheduler, policy in COMBOS:
        room = bench(scheduler, policy, 200_000)
        full = bench(scheduler, policy, 20_000)
        print(
            f"  {scheduler + '+' + policy:22s}: {room[0]:9.1f} / {room[1]:7.1f}    {full[0]:9.1f} / {full[1]:7.1f}"
        )


if __name__ == "__main__":
    main()
