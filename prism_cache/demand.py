"""Demand counts per chained block hash, kept incrementally by the scheduler (never recomputed per step).

=========== ================================================== ===============================
table       a request is counted on each of its full blocks     added / removed
=========== ================================================== ===============================
queued      while it waits in the queue                          enqueue / admit or cancel
planned     while it is in the batch being planned this step     plan / end of the step
lookahead   while it is among the next W waiting requests        enters / leaves the window
=========== ================================================== ===============================

Active demand is not here: it is the radix node's lock count (running requests lock their matched path).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prism_cache.popularity import SegmentPopularity


class Watched:
    """A table keyed by chained block hash whose changes the radix tree watches, to re-key only the leaves whose
    tail entry changed (its persistent eviction heap; see ``RadixTree._candidates``)."""

    def __init__(self) -> None:
        self._watchers: list[set[int]] = []

    def watch(self, changed: set[int]) -> None:
        """From now on, add to ``changed`` every hash whose entry changes (the watcher drains the set)."""
        if not any(w is changed for w in self._watchers):
            self._watchers.append(changed)

    def unwatch(self, changed: set[int]) -> None:
        self._watchers = [w for w in self._watchers if w is not changed]

    def _notify(self, hashes: Iterable[int]) -> Iterable[int]:
        if not self._watchers:
            return hashes
        if not isinstance(hashes, (list, tuple)):
            hashes = list(hashes)  # a generator would be read twice: by the watchers, then the counts
        for w in self._watchers:
            w.update(hashes)
        return hashes


class DemandTable(Watched):
    """A multiset of block hashes; ``count`` of an absent hash is 0, and no count goes negative."""

    def __init__(self) -> None:
        super().__init__()
        self._counts: dict[int, int] = {}
        self.get = (
            self._counts.get
        )  # NOTE: the hot path (eviction keys, QAS ranking) reads counts through this

    def add(self, hashes: Iterable[int]) -> None:
        hashes = self._notify(hashes)
        counts = self._counts
        for h in hashes:
            counts[h] = counts.get(h, 0) + 1

    def remove(self, hashes: Iterable[int]) -> None:
        """Raises ValueError if a hash was not added (a count would go negative)."""
        hashes = self._notify(hashes)
        counts = self._counts
        for h in hashes:
            c = counts.get(h, 0)
            if c <= 0:
                raise ValueError("demand removed that was never added")
            if c == 1:
                del counts[h]
            else:
                counts[h] = c - 1

    def count(self, h: int) -> int:
        return self._counts.get(h, 0)

    def __contains__(self, h: int) -> bool:
        return h in self._counts

    def __len__(self) -> int:
        """Distinct hashes with a positive count."""
        return len(self._counts)


class Demand:
    """The tables DART and look-ahead LRU read; the scheduler writes them. ``popularity`` (DART only, else None):
    see :mod:`prism_cache.popularity`."""

    def __init__(self, popularity: SegmentPopularity | None = None) -> None:
        self.queued = DemandTable()
        self.planned = DemandTable()
        self.lookahead = DemandTable()
        self.popularity = popularity
