"""LFU: fewest uses first, ties by recency (SGLang's ``(hit_count, last_access_time)``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prism_cache.policies.base import Key

if TYPE_CHECKING:
    from prism_cache.demand import DemandTable
    from prism_cache.node import Node


class LfuPolicy:
    name = "lfu"
    stable_keys = True

    def demand_tables(self) -> tuple[DemandTable, ...]:
        return ()

    def key(self, node: Node, n_blocks: int, tick: int) -> Key:
        return (node.hits, node.last_access)
