"""The retention-policy contract: a pure ranking of evictable nodes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from prism_cache.watched import Watched
    from prism_cache.node import Node

Key = tuple[float, ...]


class RetentionPolicy(Protocol):
    """Ranks unlocked leaves for eviction; the tree evicts the lowest key first.

    Policies read node fields (``last_access``, ``hits``, ``lock``, ``hashes``) and the demand tables, and never
    mutate the tree. Locked nodes are never offered to ``key``.
    """

    name: str
    # True if no key decreases while the tree is only matched, locked, unlocked or evicted from (no inserts,
    # no demand changes): lets a batch of allocations share one eviction heap (RadixTree.begin_batch).
    stable_keys: bool

    def demand_tables(self) -> tuple[Watched, ...]:
        """The tables ``key`` reads (by a node's hashes), so the tree can watch them and keep a persistent
        eviction heap current; nothing else outside the node may enter the key of a ``stable_keys`` policy."""
        ...

    def key(self, node: Node, n_blocks: int, tick: int) -> Key:
        """Args: node: an unlocked leaf; n_blocks: rank the node as if cut to its first n_blocks blocks
        (1 <= n_blocks <= len(node.blocks)), as eviction removes tail blocks first; tick: the tree's clock.
        Returns: a tuple compared lexicographically; lower is evicted first. Contract: never increases with
        n_blocks (a shorter cut of a node ranks at least as high), which lets eviction binary-search how many
        tail blocks to take."""
        ...
