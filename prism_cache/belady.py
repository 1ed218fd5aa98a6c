"""Offline Belady bound: exact-prefix hits when the cache always evicts the block whose next use is furthest
in the future, knowing the whole request sequence.

Each request is its prompt's full blocks in prefix order, given as *units*: (key, n_blocks) runs whose blocks
are always used together (a Mooncake hash_id spans 512 tokens = 512 / block_size blocks), so the bound costs
O(units log units), not O(blocks). A request hits the longest prefix of its blocks that is resident; then all
its blocks are inserted and the cache is cut back to capacity, furthest next use first, deeper units first on
ties (a child is never used without its parent, so the parent's next use is never later), a unit's tail blocks
before its head. Evicting what was just inserted is allowed (the optimal policy may bypass).

It is an upper bound for the replay's order: it ignores the blocks running requests hold, and no online policy
can know the future better. A scheduler that reorders requests gets the bound for *its* order.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Sequence

Unit = tuple[Hashable, int]
NEVER = float("inf")


def _next_uses(requests: Sequence[Sequence[Unit]]) -> list[list[float]]:
    """For each request and unit, the index of the next request using the same key (inf if none)."""
    last: dict[Hashable, float] = {}
    out: list[list[float]] = [[] for _ in requests]
    for i in range(len(requests) - 1, -1, -1):
        row = [last.get(key, NEVER) for key, _ in requests[i]]
        out[i] = row
        for key, _ in requests[i]:
            last[key] = i
    return out


def belady_hits(requests: Sequence[Sequence[Unit]], capacity_blocks: int) -> list[int]:
    """Blocks each request finds cached under offline-optimal (furthest next use) eviction.

    Args: requests: per request, its (key, n_blocks) units in prefix order; equal keys must mean equal
    content and position (chained ids); capacity_blocks: cache size in blocks (>= 0).
    Returns: per request, the number of leading blocks served from the cache.
    """
    next_use = _next_uses(requests)
    resident: dict[Hashable, int] = {}
    current: dict[Hashable, float] = {}
    heap: list[tuple[float, int, int, Hashable]] = []
    used, counter, hits = 0, 0, []
    for i, units in enumerate(requests):
        hits.append(_prefix_hit(units, resident))
        for depth, (key, n) in enumerate(units):
            have = resident.get(key, 0)
            if n > have:
                resident[key] = n
                used += n - have
            current[key] = next_use[i][depth]
            counter += 1
            heapq.heappush(heap, (-next_use[i][depth], -depth, counter, key))
        used = _evict(heap, resident, current, used, capacity_blocks)
    return hits


def _prefix_hit(units: Sequence[Unit], resident: dict[Hashable, int]) -> int:
    hit = 0
    for key, n in units:
        have = resident.get(key, 0)
        hit += min(have, n)
        if have < n:
            break
    return hit


def _evict(
    heap: list[tuple[float, int, int, Hashable]],
    resident: dict[Hashable, int],
    current: dict[Hashable, float],
    used: int,
    capacity: int,
) -> int:
    while used > capacity:
        neg_next, _, _, key = heap[0]
        if resident.get(key, 0) == 0 or current.get(key) != -neg_next:
            heapq.heappop(heap)  # stale entry
            continue
        cut = min(used - capacity, resident[key])
        resident[key] -= cut
        used -= cut
        if resident[key] == 0:
            del resident[key]
            heapq.heappop(heap)
    return used
