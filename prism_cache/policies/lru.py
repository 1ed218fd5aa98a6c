"""LRU: least recently used leaf first (TGI's and SGLang's default)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prism_cache.policies.base import Key

if TYPE_CHECKING:
    from prism_cache.demand import DemandTable
    from prism_cache.node import Node


class LruPolicy:
    name = "lru"
    stable_keys = True

    def demand_tables(self) -> tuple[DemandTable, ...]:
        return ()

    def key(self, node: Node, n_blocks: int, tick: int) -> Key:
        return (node.last_access,)
