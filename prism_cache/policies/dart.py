"""DART (PRISM): demand-aware retention, ``P = 1e6·active + 1e5·planned + 1·queued``, ties by recency.

Per node (per tail block, as eviction cuts tail blocks first): active = requests running on it (its lock
count; locked nodes are never evicted, so active demand is absolute protection), planned = requests of the batch
being planned this step, queued = waiting requests whose prompt covers the block. The weights are the paper's
(``w_a = 1e6, w_n = 1e5, w_g = 1``); with fewer than 10 planned users the order is lexicographic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prism_cache.demand import Demand
from prism_cache.policies.base import Key

if TYPE_CHECKING:
    from prism_cache.radix_tree import Node

W_ACTIVE = 1e6
W_PLANNED = 1e5
W_QUEUED = 1.0


class DartPolicy:
    name = "dart"
    stable_keys = True

    def __init__(self, demand: Demand) -> None:
        self.demand = demand

    def priority(self, node: Node, n_blocks: int) -> float:
        h = node.hashes[n_blocks - 1]
        d = self.demand
        return W_ACTIVE * node.lock + W_PLANNED * d.planned.get(h, 0) + W_QUEUED * d.queued.get(h, 0)

    def key(self, node: Node, n_blocks: int, tick: int) -> Key:
        return (self.priority(node, n_blocks), node.last_access)
