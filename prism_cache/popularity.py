"""Segment popularity: DART's history signal for blocks that only one request has used so far.

Exact-prefix reuse of a block needs its whole path to recur. Of two tails cached once each, the one made of
passages that many requests retrieve (anywhere in their prompts) is likelier to recur than one ending in a
rarely retrieved passage; the tree cannot tell them apart (each node was used once), the block *contents* can.
So, when a request enters the queue, :meth:`SegmentPopularity.observe`

1. counts one use of each full block's content (namespace + token ids, wherever it sits in the prompt), each
   use decaying by half after ``half_life`` cache capacities of observed prompt blocks;
2. records under each block's chained hash (its radix position) the content of the least popular block on the
   prompt up to it: reuse at depth d needs every block before it.

:meth:`value` of a position is the *current* popularity of its recorded content, so a tail cached long ago
gains as its passages get retrieved elsewhere. Values are log-form, ``ln(decayed count) + clock / tau`` (as
``Node.heat``): they compare across time with no sweep. Every change of a position's value (its content
counted again, its record replaced or dropped) is notified to watchers, found through the reverse index of
records, so the radix tree re-keys the leaves whose tail changed and DART's keys stay exact.

Memory stays bounded: past a bound, a prune drops the contents whose decayed count fell below one half with
the records naming them unless a cached or waiting position names them, and the records of positions neither
cached, waiting nor written since the previous prune started; a position without a record reads as
:data:`UNSEEN`. A prune runs in slices, one per observed request (:mod:`prism_cache.sweep`: a whole sweep
stalled the router for 250-330 ms at 65,536 blocks), "cached or waiting" as when it started, and its table
grows by at most a quarter while it runs. A record it will drop stays until swept, read by no eviction key
(its position is neither cached nor waiting) and only overwritten by :meth:`observe`; a content it will drop
that is counted again before then keeps its old uses (under half a use). The simulator's two paper
experiments decide the same as with a whole sweep. Once a prune ends, a deeper position never keeps its record
when a shallower one on its path loses it (it is cached, waiting or written only with it, and names a content
no more popular). A running request's positions
are neither cached nor waiting until its prompt is published (at its first token, ``prefill_done``); a prune
period is at least two cache capacities of observed blocks, and a position dropped in that window merely
ranks first for eviction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Sequence

from prism_cache.decay import LN2, add_use, decay_tau
from prism_cache.sweep import Sweep
from prism_cache.watched import Watched

UNSEEN = -1000.0  # the value of a position without a record: below any observed one (>= 0), small enough
# that weight x UNSEEN + heat still orders unobserved nodes by heat


class SegmentPopularity(Watched):
    """Args: capacity_blocks: the cache's usable blocks (sets the decay horizon and the table bounds);
    half_life: capacities of observed blocks after which a use counts half (> 0); block_size: tokens per block;
    kept: the positions that must keep their records (cached or waiting), asked once as a prune starts."""

    def __init__(
        self, capacity_blocks: int, half_life: float, block_size: int, kept: Callable[[], Container[int]]
    ) -> None:
        super().__init__()
        self._tau = decay_tau(half_life, capacity_blocks)
        self.block_size = block_size
        self._kept = kept
        self._clock = 0  # prompt blocks observed
        self._bound = 4 * max(1, capacity_blocks) + 4096
        self._content_limit = self._path_limit = self._bound
        self._content: dict[int, float] = {}  # content key -> log-form popularity
        self._path: dict[int, int] = {}  # chained hash -> content key of the least popular block up to it
        self._readers: dict[int, set[int]] = {}  # content key -> the positions whose record it is
        self._recent: set[int] = set()  # positions written since the last prune of _path started
        self._written: set[int] = set()  # while it runs, those written in the period before
        self._content_sweep: Sweep | None = None  # the prunes running (prism_cache.sweep)
        self._path_sweep: Sweep | None = None
        self.dropped_contents = self.dropped_positions = 0  # by the bounds, so far
        # NOTE: value(h) is value_of(record_of(h)) when the record exists; DART's key (the eviction hot path)
        # reads the two bound lookups directly
        self.record_of = self._path.get
        self.value_of = self._content.__getitem__

    def observe(self, namespace: str, tokens: Sequence[int], hashes: Sequence[int]) -> None:
        """Count a request's blocks and record its path popularity. ``hashes``: the chained hashes of its full
        blocks (``prism_cache.hashing.block_hashes`` of the same namespace and tokens)."""
        now = self._clock / self._tau
        ns, bs, add = hash(namespace), self.block_size, add_use
        content, readers, path = self._content, self._readers, self._path
        changed: list[int] = []  # positions whose value changes: a new record, or its content counted again
        lowest, weakest = math.inf, 0
        for i, h in enumerate(hashes):
            key = hash(tuple(tokens[i * bs : (i + 1) * bs])) ^ ns
            old = content.get(key)
            value = now if old is None else add(old, now)
            content[key] = value
            if key in readers:
                changed.extend(readers[key])  # positions whose value just grew
            if value < lowest:
                lowest, weakest = value, key
            recorded = path.get(h)
            if recorded != weakest:
                changed.append(h)
                if recorded is not None:
                    self._unrecord(h)
                path[h] = weakest
                if weakest in readers:
                    readers[weakest].add(h)
                else:
                    readers[weakest] = {h}
        self._recent.update(hashes)
        self._notify(changed)
        self._clock += len(hashes)
        self._prune(len(hashes))

    def value(self, h: int) -> float:
        """The popularity of position ``h``: the current value of its recorded content (UNSEEN without a
        record)."""
        weakest = self._path.get(h)
        return UNSEEN if weakest is None else self._content[weakest]

    def _unrecord(self, h: int) -> bool:
        """Drop the record of ``h``; returns whether it had one."""
        weakest = self._path.pop(h, None)
        if weakest is None:
            return False
        readers = self._readers[weakest]
        readers.discard(h)
        if not readers:
            del self._readers[weakest]
        return True

    def _prune(self, blocks: int) -> None:
        """Start a table's prune past its bound (one snapshot of what is kept serves both), and sweep a slice
        of each prune running (:mod:`prism_cache.sweep`: a call observing ``blocks`` blocks)."""
        kept = None
        if self._content_sweep is None and len(self._content) > self._content_limit:
            kept = self._kept()
            self._content_sweep = Sweep(self._content, kept)
        path_full = len(self._path) > self._path_limit or len(self._recent) > self._bound
        if self._path_sweep is None and path_full:
            self._path_sweep = Sweep(self._path, self._kept() if kept is None else kept)
            self._written, self._recent = self._recent, set()
        if self._content_sweep is not None:
            self._prune_content(self._content_sweep, blocks)
        if self._path_sweep is not None:
            self._prune_path(self._path_sweep, blocks)

    def _prune_content(self, sweep: Sweep, blocks: int) -> None:
        """Drop a slice's contents whose decayed count is below one half with the records naming them (those
        positions read UNSEEN: notified), unless a position cached or waiting at the start names it; at the
        end, the bound doubles past what stays, so a prune costs O(1) amortized per observed block."""
        cut, content, readers, kept = self._clock / self._tau - LN2, self._content, self._readers, sweep.kept
        unrecorded: list[int] = []
        for k in sweep.take(blocks):
            if content[k] >= cut or any(h in kept for h in readers.get(k, ())):
                continue  # NOTE: only a sweep deletes contents, so every snapshot key is still there
            del content[k]
            self.dropped_contents += 1
            sweep.staying -= 1
            for h in readers.pop(k, ()):
                del self._path[h]
                unrecorded.append(h)
        self._notify(unrecorded)
        if not sweep:
            self._content_sweep = None
            self._content_limit = max(self._bound, 2 * sweep.staying)

    def _prune_path(self, sweep: Sweep, blocks: int) -> None:
        """Drop a slice's records of positions neither cached nor waiting at the start nor written since the
        previous prune started; at the end, the next prune comes after half the bound of new records (or a
        bound of writes), so this costs O(1) amortized per observed block while the table stays within what is
        cached or waiting plus one and a half bounds (and a quarter more while a sweep runs)."""
        kept, recent, written = sweep.kept, self._recent, self._written
        stale = [h for h in sweep.take(blocks) if h not in written and h not in recent and h not in kept]
        unrecord = self._unrecord
        dropped = [h for h in stale if unrecord(h)]  # NOTE: a content's prune may have dropped it already
        self._notify(dropped)
        self.dropped_positions += len(dropped)
        sweep.staying -= len(dropped)
        if not sweep:
            self._path_sweep, self._written = None, set()
            # NOTE: not 2 x what stays, as for contents: what stays includes the writes since the previous
            # prune, so the limit would grow with every period
            self._path_limit = max(self._bound, sweep.staying + self._bound // 2)

    def __len__(self) -> int:
        """Positions with a record."""
        return len(self._path)
