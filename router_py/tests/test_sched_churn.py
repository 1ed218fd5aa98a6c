"""Random churn: >= 100,000 operations over a two-token vocabulary (prefixes collide constantly), checking the
block accounting after every step."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from prism_cache import Allocation
from router_py.scheduling.registry import QueueScheduler, make_scheduler
from router_py.scheduling.interface import SchedRequest, SchedulerConfig

STEPS = 100_000
MAX_WAITING = 40  # keeps the queue (and dfs-weight's per-step walk over it) bounded


def _check(s: QueueScheduler, direct: dict[int, tuple[Allocation, tuple[int, ...]]]) -> None:
    """Blocks conserved, none held twice, no negative count, locked (in-use) prefixes still cached."""
    a = s.allocator
    assert a is not None
    cached = a.check_integrity()  # pool: free list <=> refcount 0, no negatives; tree: structure and locks
    live = [alloc for _, alloc in s.running.values() if alloc is not None] + [al for al, _ in direct.values()]
    holders = Counter(b for alloc in live for b in alloc.blocks)
    for b in range(1, a._pool.num_blocks):
        assert a._pool.refcount(b) == holders[b] + (b in cached), f"block {b} accounting"
    for alloc in live:
        n_prefix = alloc.prefix_len // a.block_size
        assert set(alloc.blocks[:n_prefix]) <= cached, "a locked prefix was evicted"


@pytest.mark.parametrize(
    ("scheduler", "policy", "block_size"),
    [("qas", "dart", 2), ("fcfs", "lru", 1), ("lpm", "lookahead-lru", 2), ("dfs-weight", "hotprefix", 4)],
)
def test_churn_keeps_block_accounting(scheduler: str, policy: str, block_size: int) -> None:
    rng = random.Random(1234)
    s = make_scheduler(SchedulerConfig(scheduler, policy, num_blocks=48, block_size=block_size))
    assert isinstance(s, QueueScheduler) and s.allocator is not None
    alloc = s.allocator
    direct: dict[int, tuple[Allocation, tuple[int, ...]]] = {}
    next_id = 0
    for step in range(STEPS):
        op = rng.random()
        if op < 0.3 and s.waiting_count() < MAX_WAITING:
            ids = [rng.randint(0, 1) for _ in range(rng.randint(1, 12))]
            s.enqueue(
                SchedRequest(
                    next_id, ids, rng.randint(1, 4), step * 0.01, rng.choice(["", "t"]), rng.random() > 0.1
                ),
                step * 0.01,
            )
            next_id += 1
        elif op < 0.45:
            s.next_batch(step * 0.01, rng.randint(1, 24), 64, max_size=rng.choice([None, 2]))
        elif op < 0.6 and s.running:
            rid, roll = rng.choice(list(s.running)), rng.random()
            if roll < 0.4:
                s.prefill_done(rid)
            elif roll < 0.8:  # ended: what it generated (at most its max_new) is cached after the prompt
                max_new = s.running[rid][0].request.max_new_tokens
                s.release(rid, generated=[rng.randint(0, 1) for _ in range(rng.randint(0, max_new))])
            else:  # left mid-prompt (or failed): some leading tokens computed, as a shard would say
                s.release(rid, computed=False, computed_prefix=rng.randint(0, 12))
        elif op < 0.65:
            s.cancel(rng.randint(max(0, next_id - 10), next_id))
        elif op < 0.8:
            prompt = tuple(rng.randint(0, 1) for _ in range(rng.randint(1, 10)))
            got = alloc.allocate(len(prompt) + rng.randint(0, 3), "d", prompt)
            if got is not None:
                direct[next_id] = (got, prompt)
                next_id += 1
        elif op < 0.95 and direct:
            key = rng.choice(list(direct))
            got, prompt = direct.pop(key)
            if rng.random() < 0.3:
                alloc.cache_prompt(got, prompt, alloc.hashes("d", prompt))
                direct[key] = (got, prompt)
            elif rng.random() < 0.5:
                alloc.release(got, prompt)
            else:
                alloc.rollback(got)
        else:
            alloc._tree.evict(rng.randint(1, 8), alloc._policy)
        _check(s, direct)
    for rid in list(s.running):
        s.release(rid)
    for got, _ in direct.values():
        alloc.rollback(got)
    _check(s, {})
    stats = s.cache_stats()
    assert stats["blocks_free"] + stats["blocks_cached"] == stats["blocks_total"]
    assert stats["evictions"] > 0 and stats["prompt_tokens_hit"] > 0
