"""``qas`` (PRISM's query-aware scheduler): a hot lane that admits requests sharing the most valuable segment
together, and a FIFO cold lane; co-designed with DART.

Each step looks at the first :attr:`QasParams.window` waiting requests (arrival order; the rest of the queue
is offered FIFO after them, so a step costs O(window), not O(queue)). For each it finds its *segment*: its
longest prefix that is cached or shared with another waiting request (binary search over DART's queued demand,
which never increases along a prompt's chain of blocks), named by the segment's last block hash. Requests with
the same segment form a group whose value is the prefill it saves:

    reuse = g * cached_tokens + w * (g - 1) * (segment_tokens - cached_tokens)      g = group size

The first term is realised now (the segment is in the tree: retention feeds admission); the second only after
a pioneer has prefilled the segment, weighted by :attr:`QasParams.pioneer_weight` w (off by default: what
promoting pioneers costs is in docs/benchmarks.md, trace replay).

Order offered to TGI's admission loop (which stops at the first request that does not fit):
  1. aged requests (FIFO): waited longer than the wait bound (:meth:`QasScheduler.wait_bound`: the recent
     mean queue wait x ``qas_wait_factor``, capped at ``qas_max_wait_s``) or passed over by ``qas_max_bypass``
     later arrivals; a later member of an uncached segment does not go in the batch that prefills it (nor
     while a hot-lane pioneer of it prefills), except past ``qas_max_wait_s`` or ``qas_max_bypass``;
  2. hot lane: groups with reuse > 0, by reuse (ties: oldest member). A group whose segment is fully cached is
     admitted whole; otherwise only its oldest member (the pioneer) goes, and the rest wait until the pioneer's
     prompt is in the tree (prefill_done or release) -- the segment is prefilled once, not once per member
     (``qas_dedup``; 0 admits whole groups at once);
  3. cold lane, in arrival order: requests sharing nothing, and pioneers of groups with no reuse yet.

The co-design, as in the paper: the planned batch (the prefix of this order that fits the prefill budget) is
counted as DART's planned demand before any allocation, so this batch's own evictions spare it; queued demand
(kept per block as requests enter and leave the queue) drives both DART's retention and the groups here; the
tree's cached state (retention) drives the reuse values and which groups are admitted whole.

Starvation bound (guaranteed, tested): no waiting request is passed over by more than ``qas_max_bypass``
later arrivals, and once it has waited more than ``qas_max_wait_s`` seconds (less under light load, see
:meth:`QasScheduler.wait_bound`) no later arrival is admitted before it.
Within those bounds it can still wait on memory or budget (TGI's head-of-line semantics), never on reordering.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import ClassVar

from prism_cache import DemandTable
from prism_cache.params import parse_knobs
from router_py.scheduling.queue_scheduler import QueueScheduler
from router_py.scheduling.batch_builder import Limits
from router_py.scheduling.waiting import Waiting
from router_py.scheduling.interface import SchedulerConfig

WAIT_EWMA = 1 / 32  # weight of one admission in the mean queue wait (~ the last 32 admissions)


@dataclass(frozen=True)
class QasParams:
    """``qas_*`` knobs. Raises ValueError on a window < 1 or a negative bound."""

    PREFIX: ClassVar[str] = "qas_"
    window: int = 32  # waiting requests ranked per step (the rest of the queue goes FIFO after them)
    max_bypass: int = 128  # K: later arrivals that may be admitted before a waiting one
    max_wait_s: float = 5.0  # T: after T seconds waiting, no later arrival goes first
    wait_factor: float = 1.0  # age earlier, after this x the recent mean queue wait (<= T); 0 = T only
    dedup: bool = True  # pioneer-only admission of an uncached shared segment
    pioneer_weight: float = 0.0  # weight of a pioneer's future reuse in the hot lane's ranking

    def __post_init__(self) -> None:
        if self.window < 1 or self.max_bypass < 0 or self.max_wait_s < 0 or self.wait_factor < 0:
            raise ValueError("qas_window must be >= 1, qas_max_bypass, qas_max_wait_s, qas_wait_factor >= 0")


class QasScheduler(QueueScheduler):
    name = "qas"

    def __init__(self, config: SchedulerConfig) -> None:
        p = parse_knobs(QasParams, config.params)
        super().__init__(config)
        self.window = p.window
        self.max_bypass = p.max_bypass
        self.max_wait_s = p.max_wait_s
        self.wait_factor = p.wait_factor
        self.mean_wait = 0.0  # EWMA of admitted requests' queue waits (seconds)
        self.dedup = p.dedup
        self.pioneer_weight = p.pioneer_weight
        self.inflight: dict[
            int, int
        ] = {}  # segment hash -> id of its running pioneer (prompt not yet cached)
        self._inflight_demand = DemandTable()  # the running pioneers' blocks, until their prompt is cached
        self._inflight_hashes: dict[int, list[int]] = {}
        self._pioneers: dict[int, int] = {}  # this step: request id -> the uncached segment it would pioneer

    # ---------------------------------------------------------------- order
    def _order(self, now: float, limits: Limits) -> tuple[Iterable[Waiting], list[Waiting]]:
        window = self.queue.head(self.window)
        bound = self.wait_bound()
        aged: list[Waiting] = []
        fresh: list[Waiting] = []
        for e in window:
            (aged if self._aged(e, now, bound) else fresh).append(e)
        window_ids = {e.request.id for e in window}
        tail = (e for e in self.queue if e.request.id not in window_ids)
        self._pioneers = {}
        pioneered: set[int] = set()
        lanes = chain(self._aged_lane(aged, now, pioneered), self._hot_lane(fresh, pioneered), tail)
        order = self._guarded(lanes, window)
        planned = self._planned(order, limits)
        return chain(planned, order), [e for e in planned if e.hashes]

    def wait_bound(self) -> float:
        """A request that has waited longer than this is aged: ``qas_max_wait_s`` T, or with
        ``qas_wait_factor`` f > 0 the smaller of T and f x the recent mean queue wait. Tied to
        load because a fixed T is the P99 near the knee (the cold lane waits T while hot groups go first);
        with the mean wait, the cold lane stays near FIFO while queues are short and reordering grows with
        the queue. Never above T, so the starvation bound holds. Waits of 0 (no clock: the replay) never
        age."""
        if self.wait_factor <= 0:
            return self.max_wait_s
        return min(self.max_wait_s, self.wait_factor * self.mean_wait)

    def _aged(self, entry: Waiting, now: float, bound: float) -> bool:
        return entry.bypassed >= self.max_bypass or now - entry.request.arrival > bound

    def _aged_lane(self, entries: list[Waiting], now: float, pioneered: set[int]) -> list[Waiting]:
        """Aged requests in arrival order; the first one of an uncached shared segment goes (``pioneered``), a
        later one waits while the segment goes in this batch or a hot-lane pioneer of it prefills, unless it
        has reached the hard bounds (``qas_max_bypass``, ``qas_max_wait_s``): aging reorders, it does not have
        a segment prefilled twice in one batch (with the mean-wait bound, most waiting requests are aged under
        a light load). An aged pioneer is not tracked as in flight, so later arrivals do not wait for it (why:
        docs/performance.md, session 29)."""
        if not self.dedup:
            return entries
        out: list[Waiting] = []
        for entry in entries:
            segment = self._segment(entry)
            if segment is not None and not segment[3]:
                h = segment[0]
                if h not in self.inflight and h not in pioneered:
                    pioneered.add(h)
                elif not self._aged(entry, now, self.max_wait_s):
                    continue
            out.append(entry)
        return out

    def _hot_lane(self, entries: list[Waiting], pioneered: set[int]) -> list[Waiting]:
        """Hot groups by reuse (ties: oldest member first), then the cold lane in arrival order: requests that
        share nothing, and the pioneers of groups worth nothing yet. Deferred followers (of a segment in
        ``pioneered`` too: an aged pioneer's) are left out."""
        groups: dict[int, list[Waiting]] = {}
        segments: dict[int, tuple[int, int, bool]] = {}
        cold: list[Waiting] = []
        for entry in entries:
            segment = self._segment(entry)
            if segment is None:
                cold.append(entry)
            else:
                groups.setdefault(segment[0], []).append(entry)
                segments[segment[0]] = segment[1:]
        hot: list[tuple[tuple[float, int], list[Waiting]]] = []
        for h, members in groups.items():
            cached, uncached, whole = segments[h]
            g = len(members)
            reuse = g * cached + self.pioneer_weight * (g - 1) * uncached
            admissible = self._admissible(h, members, whole, pioneered)
            if reuse > 0:
                hot.append(((-reuse, members[0].seq), admissible))
            else:
                cold.extend(admissible)
        hot.sort(key=lambda item: item[0])
        cold.sort(key=lambda e: e.seq)
        return [e for _, members in hot for e in members] + cold

    def _segment(self, entry: Waiting) -> tuple[int, int, int, bool] | None:
        """(segment hash, cached tokens, uncached segment tokens, fully cached), or None if the request shares
        nothing with the cache or the queue."""
        if not entry.hashes:
            return None
        bs = self.config.block_size
        cached_blocks = self.cached_prefix(entry) // bs
        seg_blocks = self._segment_blocks(entry, cached_blocks)
        if seg_blocks == 0:
            return None
        h = entry.hashes[seg_blocks - 1]
        return h, cached_blocks * bs, (seg_blocks - cached_blocks) * bs, cached_blocks >= seg_blocks

    def _segment_blocks(self, entry: Waiting, cached_blocks: int) -> int:
        """Leading blocks of ``entry`` that are cached or that another waiting request, or a pioneer still
        prefilling, also has. Shared demand never grows along a prompt's chain, so the search starts past the
        cached blocks: one probe when sharing ends there too (a segment reused from the cache, the usual
        case), instead of a binary search over the whole prompt."""
        assert self.allocator is not None
        queued, pioneers, hashes = self.allocator.queued_demand, self._inflight_demand.get, entry.hashes
        lo, hi = cached_blocks, len(hashes)
        if lo == hi or queued(hashes[lo], 0) + pioneers(hashes[lo], 0) < 2:
            return lo
        lo += 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if queued(hashes[mid - 1], 0) + pioneers(hashes[mid - 1], 0) >= 2:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _admissible(
        self, h: int, members: list[Waiting], cached_whole: bool, pioneered: set[int]
    ) -> list[Waiting]:
        """Members to offer now: all if the segment is cached (or dedup is off), else the pioneer, or nobody
        while a pioneer for this segment is still prefilling or goes in this batch (``pioneered``)."""
        if cached_whole or not self.dedup:
            return members
        if h in self.inflight or h in pioneered:
            return []
        self._pioneers[members[0].request.id] = h
        return members[:1]

    # ---------------------------------------------------------------- starvation guard
    def _guarded(self, candidates: Iterable[Waiting], window: list[Waiting]) -> Iterator[Waiting]:
        """Yield ``candidates`` in order, except that before a later arrival would pass the oldest not yet
        yielded window request for the (max_bypass + 1)-th time, that request is yielded first."""
        yielded: set[int] = set()
        later_seqs: list[int] = []
        fifo = iter(window)
        head = next(fifo, None)
        for entry in candidates:
            while head is not None and (
                head.request.id in yielded
                or (
                    entry.seq > head.seq and head.bypassed + self._passed(head, later_seqs) >= self.max_bypass
                )
            ):
                if head.request.id not in yielded:
                    yielded.add(head.request.id)
                    later_seqs.append(head.seq)
                    yield head
                head = next(fifo, None)
            if entry.request.id not in yielded:
                yielded.add(entry.request.id)
                later_seqs.append(entry.seq)
                yield entry

    @staticmethod
    def _passed(head: Waiting, seqs: list[int]) -> int:
        return sum(1 for s in seqs if s > head.seq)

    def _planned(self, order: Iterator[Waiting], limits: Limits) -> list[Waiting]:
        """Take from ``order`` the requests expected to fit the prefill budget and max_size: the planned batch."""
        planned: list[Waiting] = []
        tokens = 0
        while tokens < limits.prefill_budget and (limits.max_size is None or len(planned) < limits.max_size):
            entry = next(order, None)
            if entry is None:
                break
            planned.append(entry)
            tokens += entry.request.input_length - self.cached_prefix(entry)
        return planned

    # ---------------------------------------------------------------- bookkeeping
    def _on_admitted(self, entries: list[Waiting], now: float) -> None:
        window = self.queue.head(self.window)
        for admitted in entries:
            self.mean_wait += (now - admitted.request.arrival - self.mean_wait) * WAIT_EWMA
            for waiting in window:
                if waiting.seq < admitted.seq:
                    waiting.bypassed += 1
            h = self._pioneers.get(admitted.request.id)
            if h is not None:
                self.inflight[h] = admitted.request.id
                self._inflight_hashes[admitted.request.id] = admitted.hashes
                self._inflight_demand.add(admitted.hashes)
        self._pioneers = {}

    def _on_prefilled(self, entry: Waiting) -> None:
        hashes = self._inflight_hashes.pop(entry.request.id, None)
        if hashes is None:
            return
        self._inflight_demand.remove(hashes)
        for h in [h for h, rid in self.inflight.items() if rid == entry.request.id]:
            del self.inflight[h]
