"""Micro-benchmark of one scheduling step with 1,000 requests waiting (printed, never asserted):
``python -m router_py.scheduling.microbench``.

1,000 waiting requests of 1,024-2,048 tokens drawn from 50 shared 512-token segments (Zipf-like reuse), block
size 16. Each step is one ``next_batch`` (4,096-token prefill budget) followed, off the clock, by releasing what
it admitted and enqueueing as many new requests, so the queue stays at 1,000. Two memory sizes: 200,000 blocks
(the steps measured never evict: scheduling plus allocation) and 20,000 blocks (full: every admission evicts,
which first re-keys the leaves whose rank changed since the last eviction in the tree's persistent heap).

Then the tier statistics the batcher records after every step (``TierLink.record`` of ``cache_stats()``,
``record_cost``), with the KV tiers off and on: the part of a step's bookkeeping that tiers add.
"""

from __future__ import annotations

import random
import statistics
import time
import timeit

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


def record_cost(tiers: bool, calls: int = 20_000) -> float:
    """Microseconds of one ``TierLink.record`` of a qas+dart scheduler's ``cache_stats()`` after a step that
    hit (``tiers``: with a 4,096-block host tier, as ``--kv-host-tokens``)."""
    from prism_cache.tiers.types import TierConfig
    from router_py.engine.tier_link import TierLink
    from router_py.metrics import Metrics

    config = SchedulerConfig("qas", "dart", num_blocks=20_000, block_size=16,
                             tiers=TierConfig(4096, 0) if tiers else None)
    s = make_scheduler(config)
    link = TierLink(None, lambda: s, Metrics(), 0, enabled=tiers)  # type: ignore[arg-type]
    stats = s.cache_stats()

    def step() -> None:
        stats["prompt_tokens_hit"] += 16  # NOTE: a hit every step: the counter moves, as under load
        link.record(stats)

    return min(timeit.repeat(step, number=calls, repeat=5)) / calls * 1e6


def main() -> None:
    print(f"scheduling step with {WAITING} waiting (block size 16, prefill budget 4096), microseconds")
    print(f"  {'':22s}   no eviction (median/min)   cache full (median/min)")
    for scheduler, policy in COMBOS:
        room = bench(scheduler, policy, 200_000)
        full = bench(scheduler, policy, 20_000)
        print(
            f"  {scheduler + '+' + policy:22s}: {room[0]:9.1f} / {room[1]:7.1f}    {full[0]:9.1f} / {full[1]:7.1f}"
        )
    off, on = record_cost(False), record_cost(True)
    print(f"tier statistics per step (TierLink.record), microseconds: tiers off {off:.2f}, tiers on {on:.2f}")


if __name__ == "__main__":
    main()
