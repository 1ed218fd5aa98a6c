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

from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import TYPE_CHECKING

from prism_cache.watched import Watched

if TYPE_CHECKING:
    from prism_cache.popularity import SegmentPopularity
    from prism_cache.session_return import SessionReturn


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

    def add_all(self, lists: Iterable[Iterable[int]]) -> None:
        """:meth:`add` each of ``lists`` (a batch's plan). NOTE: counted by ``Counter`` in C, then merged in C
        into an empty table (the usual case), instead of a Python loop per hash."""
        added = Counter(chain.from_iterable(lists))
        for w in self._watchers:
            w.update(added)
        counts = self._counts
        if not counts:
            counts.update(added)
            return
        for h, n in added.items():
            counts[h] = counts.get(h, 0) + n

    def remove(self, hashes: Iterable[int]) -> None:
        """Raises ValueError if a hash was not added (a count would go negative)."""
        hashes = self._notify(hashes)
        counts = self._counts
        try:
            for h in hashes:
                c = counts[h]  # NOTE: stored counts are >= 1; a subscript is cheaper than get + test
                if c == 1:
                    del counts[h]
                else:
                    counts[h] = c - 1
        except KeyError:
            raise ValueError("demand removed that was never added") from None

    def clear(self) -> None:
        """Remove every count (what removing each added hash as often as it was added does)."""
        for w in self._watchers:
            w.update(self._counts)  # NOTE: a set takes a dict's keys with their stored hashes (no rehashing)
        self._counts.clear()

    def count(self, h: int) -> int:
        return self._counts.get(h, 0)

    def __iter__(self) -> Iterator[int]:
        """The hashes with a positive count."""
        return iter(self._counts)

    def __len__(self) -> int:
        """Distinct hashes with a positive count."""
        return len(self._counts)


class Demand:
    """The tables DART and look-ahead LRU read; the scheduler writes them. ``popularity`` and ``sessions``
    (DART only, else None): see :mod:`prism_cache.popularity` and :mod:`prism_cache.session_return`."""

    def __init__(
        self, popularity: SegmentPopularity | None = None, sessions: SessionReturn | None = None
    ) -> None:
        self.queued = DemandTable()
        self.planned = DemandTable()
        self.lookahead = DemandTable()
        self.popularity = popularity
        self.sessions = sessions
