"""What an outside party may watch of the cache: blocks entering and leaving the tree and, with KV tiers, the
copies of blocks entering and leaving the host and disk tiers (KV cache events, e.g. for routers in front of
many replicas). Changes are reported in order, as they happen; the observer must be quick and must not call
back into the cache."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from prism_cache.tiers.types import Tier


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

    def tier_stored(self, tier: Tier, h: int) -> None:
        """A copy of block ``h`` (a chained hash the tree stored earlier, see :meth:`stored`) took a slot of
        ``tier`` (host or disk): demoted from the device, written through, moved down from the host or
        prefetched up from disk. Reported when the tier's index takes it, before the shard runs the copy (as
        the tree's changes are reported when decided)."""
        ...

    def tier_removed(self, tier: Tier, h: int) -> None:
        """Block ``h``'s copy left ``tier``: given up for another block, dropped once the device holds the
        block again (exclusive policies), or lost to a failed copy."""
        ...
