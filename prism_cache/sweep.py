"""A bounded table's prune in slices: the keys it had when the prune started, a slice per observed request.

A prune that swept its whole table at once (about 4 cache capacities of entries) stalled the router's event
loop for a time growing with the pool: 250-330 ms at 65,536 blocks (docs/benchmarks.md, "Decision cost"). So a
prune snapshots the table's keys (one C-level copy) and the positions that must keep their records (cached or
waiting; the allocator lists the cached ones once per tree version), and each later ``observe`` sweeps
:data:`SLICE` keys plus :data:`PER_BLOCK` per block it observed: a call costs O(SLICE + its own blocks), and a
sweep of n keys ends within n / PER_BLOCK observed blocks, so its table grows by at most a quarter of n while
it runs. A key the table lost meanwhile is skipped; one it gained is not swept (written after the start). A
prune that comes due while the previous one runs waits for its end; with 4 keys per block that happens only
when the cached and waiting positions outnumber two cache capacities (a sweep of n <= those + 1.5 bounds keys
ends within n / 4 blocks, the next is due after half a bound of new records).

The keys are swept newest first (a slice off the list's end): a position is recorded with the whole prompt up
to it, so its ancestors were recorded before it, and a sweep drops a deeper position before a shallower one on
its path: records stay prefix-closed throughout. What DART decides does not move: the next prune's bound
counts from what a whole sweep would have left (:attr:`Sweep.staying`), and ``SessionReturn``, whose records
steer ``observe`` (the session a prompt continues, shared prefixes), reads a record the sweep will drop as
dropped already; the simulator's two paper experiments give the same hit rates and P99 as the whole sweep.
"""

from __future__ import annotations

from collections.abc import Container, Iterator, Mapping
from typing import Any

SLICE = 1024  # keys swept per observe call at least ...
PER_BLOCK = 4  # ... plus these per block it observed


class Sweep:
    """The keys a table had when its prune started, and ``kept``: the positions cached or waiting then.
    ``staying``: the table's size less what the prune drops so far; its owner sets the next prune's bound
    from it at the end, as a whole sweep at the start did (the size at the end counts writes made since)."""

    __slots__ = ("_keys", "_values", "kept", "staying")

    def __init__(self, table: Mapping[int, Any], kept: Container[int], values: bool = False) -> None:
        """``values``: also snapshot the table's values, for :meth:`take_items` (they may be stale by then)."""
        self._keys = list(table)  # NOTE: one C-level copy; the slices come off its end
        self._values = list(table.values()) if values else []
        self.kept = kept
        self.staying = len(self._keys)

    def take(self, blocks: int) -> list[int]:
        """The next slice, newest keys first, for a call that observed ``blocks`` blocks."""
        keys, n = self._keys, SLICE + PER_BLOCK * blocks
        part = keys[-n:]
        del keys[-n:]
        return part

    def take_items(self, blocks: int) -> Iterator[tuple[int, Any]]:
        """:meth:`take` with each key's value when the prune started. NOTE: a lookup per key in a table of
        300k entries misses the cache: the values' snapshot made a sweep twice faster."""
        values, n = self._values, SLICE + PER_BLOCK * blocks
        part = values[-n:]
        del values[-n:]
        return zip(self.take(blocks), part)

    def __bool__(self) -> bool:
        """Keys left to sweep."""
        return bool(self._keys)
