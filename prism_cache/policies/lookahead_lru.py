"""PCR's look-ahead LRU: blocks the next W waiting requests will reuse are refreshed and protected.

The scheduler keeps ``demand.lookahead`` (one count per block of each request in its look-ahead window) and
touches a request's cached path when it enters the window (the refresh). Eviction is LRU among unprotected
nodes first, then LRU among protected ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prism_cache.demand import Demand, DemandTable
from prism_cache.policies.base import Key

if TYPE_CHECKING:
    from prism_cache.node import Node


class LookaheadLruPolicy:
    name = "lookahead-lru"
    stable_keys = True

    def __init__(self, demand: Demand) -> None:
        self.demand = demand

    def demand_tables(self) -> tuple[DemandTable, ...]:
        return (self.demand.lookahead,)

    def key(self, node: Node, n_blocks: int, tick: int) -> Key:
        protected = self.demand.lookahead.count(node.hashes[n_blocks - 1]) > 0
        return (1 if protected else 0, node.last_access)
