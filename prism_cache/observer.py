"""What an outside party may watch of the tree: blocks entering and leaving it (KV cache events, e.g. for routers
in front of many replicas). Only the tree's own changes are reported, in order, as they happen; the observer
must be quick and must not call back into the cache."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class CacheObserver(Protocol):
    def stored(
        self, namespace: str, parent_hash: int | None, hashes: Sequence[int], tokens: Sequence[int]
    ) -> None:
        """Blocks entered the tree as one run of a path: ``hashes`` (chained block hashes, in order),
        ``tokens`` (their token ids, ``len(hashes) * block_size`` of them), under the block whose hash is
        ``parent_hash`` (None: the run starts at the namespace's root). The sequences are the observer's to
        keep."""
        ...

    def removed(self, hashes: Sequence[int]) -> None:
        """Blocks left the tree (evicted). The sequence is the observer's to keep."""
        ...

    def cleared(self) -> None:
        """Every block left the tree at once (a cache replaced by an empty one, e.g. after a shard restart).
        Called by whoever replaces the cache; the tree itself never empties at once."""
        ...
