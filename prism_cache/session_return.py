"""Session return: DART's *predicted* demand for a conversation whose next turn is not in the queue yet.

On chat and agent traffic the next use of a prompt's blocks is the session's next turn, which arrives after
the user (or the tool) has read and typed. Whether it comes is predictable from what the session did so far:
a conversation that has already come back once is likelier to come back again than a first turn. So, when a
request enters the queue, :meth:`SessionReturn.observe`

1. finds its session: the one the request names (``SchedRequest.session``: a session or user id), else the
   session whose last prompt this one extends exactly (covers every full block of it: a chat's next turn
   repeats the previous turn's prompt). A prompt that covers at least 3/4 of that prompt but not its end (an
   agent forking from an earlier step, an edited turn, a new question on the same document, another chat on a
   long system prompt: the prompt cannot tell them apart) starts a *branch*: another session, never merged
   with the first, whose returns are learned apart, and which keeps the common prefix private to the two.
   Sharing less starts an unrelated session: the common prefix is then covered by two sessions, continues
   neither, and its uses are uses by different sessions (DART keeps heat and popularity for it);
2. learns: a session at turn k that comes back within the horizon (``half_life`` cache capacities of
   observed prompt blocks, the clock of segment popularity) counts one return for turn k; every session
   reaching turn k counts one start. The return probability of turn k (1, 2, 3, 4+; branches apart) is
   ``(returns + 1) / (starts + 2)``, so it is learned online from the observed inter-turn gaps. A first
   turn has no history of its own; what is known of it is its prompt's length (a one-line question, a long
   document) and how many tokens it asks for (``max_new_tokens``: a classifier's few, a chat's many: what
   the application sets), so first turns learn it per length and per requested output as well (log4 buckets,
   the same estimate per bucket, each used once the bucket has seen :data:`CELL_MIN` first turns, and the
   two combined as independent evidence, adding their log-odds less the first turns' own). Later turns do
   not: their turn count says more, and on chat traffic a long prompt is merely a late turn, so length
   buckets there only spread their data thin;
3. records the session under each of the request's chained block hashes (its radix positions), with the
   value ``ln P(return | turn) + clock / tau`` (at turn 1, P(return | length, output)) in the log form of
   :mod:`prism_cache.decay`: the expected return decays with the session's age and compares across time with
   no sweep.

:meth:`value` of a position is the current value of its recorded session, so the prefix of an old turn gains
when the session comes back. The request's own positions change value when it is observed; watchers (the radix
tree, which re-keys the leaves whose tail changed) learn of them from the queued-demand table, which the
caller updates for the same positions at the same time (``RadixAllocator.enqueue``), so they are not told
twice. A position that an older turn recorded and the new turn no longer covers keeps a value that rose
without notice (and, at the session's second turn, DART stops counting its contents' popularity); its
eviction key then ranks it off by that change until it is re-keyed: eviction re-reads a key before it acts on
it, so a rise errs only early, a fall (a named session's turn that left its first prompt) late.

Memory is bounded as in :mod:`prism_cache.popularity`: past a bound, a prune (in slices, one per observed
request: :mod:`prism_cache.sweep`) drops and notifies the records of positions neither cached, waiting (as
when it started) nor recorded by a session observed since the previous prune started (a position without a
record reads :data:`prism_cache.popularity.UNSEEN`), and named sessions not seen for a bound of observed
blocks are forgotten. While a prune runs, :meth:`observe` reads a record it will drop as dropped already, so
it decides as when the whole table was swept at once; for that it keeps the positions observed since the
prune started and the doomed sessions seen again (at most a quarter of the table's size, and one entry per
session observed).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Container, Sequence

from prism_cache.decay import decay_tau
from prism_cache.sweep import Sweep
from prism_cache.tail_reach import TailReach
from prism_cache.watched import Watched

TURN_BUCKETS = 4  # turns 1, 2, 3 and 4+ learn separate return probabilities
LENGTH_BUCKETS = 16  # first turns also per prompt length: 0-1, 2-7, 8-31, 32-127, ... blocks (log4)
CELL_MIN = 10  # first turns a length bucket has seen before its estimate replaces the first turns' one
OUT_BUCKETS = 6  # and per requested output (max_new_tokens): 0-1, 2-7, 8-31, 32-127, 128-511, 512+ (log4)


class Session:
    """One conversation: ``turns`` requests so far, the clock of the last, the blocks of its prompt;
    ``value``: its expected return (log form); ``used``: one use at its last turn, in log form on the
    observed-blocks clock (as a popularity count), and ``heat``, the same on the tree's heat clock (as
    :attr:`Node.heat`)."""

    __slots__ = ("branch", "depth", "heat", "last", "out", "tail", "turns", "used", "value")

    def __init__(self, branch: bool = False) -> None:
        self.branch = branch  # it began as a branch of another session's prompt (learns its own returns)
        self.turns = 0
        self.out = 0
        self.last = 0
        self.depth = 0
        self.tail: int | None = None  # the hash of its last prompt's last full block
        self.value = self.used = self.heat = 0.0


class SessionReturn(Watched):
    """Args: capacity_blocks: the cache's usable blocks (decay horizon, table bound); half_life: capacities of
    observed prompt blocks after which an expected return counts half (> 0), also the horizon within which a
    return counts; kept: the positions that must keep their records (cached or waiting), asked as a prune
    starts."""

    def __init__(self, capacity_blocks: int, half_life: float, kept: Callable[[], Container[int]]) -> None:
        super().__init__()
        self._tau = decay_tau(half_life, capacity_blocks)
        self._horizon = half_life * max(1, capacity_blocks)
        self._kept = kept
        self._clock = 0  # prompt blocks observed
        self._bound = 4 * max(1, capacity_blocks) + 4096
        self._limit = self._bound
        self._owner: dict[int, Session] = {}  # chained hash -> the session of the latest request covering it
        self._named: OrderedDict[str, Session] = OrderedDict()  # the least recently observed first
        # positions two sessions have covered (a system prompt): they continue no session, and their uses are
        # uses by different sessions
        self._shared: set[int] = set()
        self._pruned_at = 0  # the clock as the last prune started
        self._since = 0  # ... and as the one before started (while the last runs)
        self._sweep: Sweep | None = None  # the prune running (prism_cache.sweep)
        self._written: set[int] = set()  # ... the positions observed since it started
        self._revived: set[Session] = set()  # ... the sessions it dooms that were observed since (_doomed)
        self.tails = TailReach()  # where reuses of a prompt stop (DART's admission control of tails)
        self.starts = [0] * 2 * TURN_BUCKETS  # per turn bucket, sessions begun afresh then branches
        self.returns = [0] * 2 * TURN_BUCKETS
        self.first_starts = [0] * 2 * LENGTH_BUCKETS  # first turns per length bucket, afresh then branches
        self.first_returns = [0] * 2 * LENGTH_BUCKETS
        self.out_starts = [0] * 2 * OUT_BUCKETS  # first turns per output bucket, afresh then branches
        self.out_returns = [0] * 2 * OUT_BUCKETS
        # NOTE: DART's key reads them (the eviction hot path)
        self.record_of = self._owner.get
        self.shared = self._shared

    def observe(
        self, hashes: Sequence[int], session: str | None = None, heat_now: float = 0.0, max_new: int = 0
    ) -> None:
        """Count a request entering the queue. ``hashes``: its full blocks' chained hashes; ``session``: the
        id the request named, if any (ids are per cache; a namespace's hashes never meet another's);
        ``heat_now``: the tree's log-form heat of one use made now (``RadixTree.heat_now``). Watchers are not
        told of ``hashes``: the caller counts the request as queued demand at the same time, which tells them
        (``RadixAllocator.enqueue``); only pruned records are notified here."""
        lo = self._deepest_recorded(hashes)
        # a prompt diverging past an already shared prefix reuses that segment, not the prompt latest on it
        if lo and hashes[lo - 1] not in self._shared:
            self.tails.reused(self._owner[hashes[lo - 1]].depth, lo)
        parent = None
        if session:
            s = self._named_session(session)
        else:
            s, parent = self._chained_session(hashes, lo)
        if self._sweep is not None and s.turns and s.last < self._since:
            self._revived.add(s)  # its records from before stay doomed by the running prune
        s.turns += 1
        s.out = min(OUT_BUCKETS - 1, max_new.bit_length() >> 1)
        s.last, s.depth, s.tail, s.heat = self._clock, len(hashes), hashes[-1] if hashes else None, heat_now
        self._count(s, self.starts, self.first_starts, self.out_starts)
        s.used = self._clock / self._tau
        s.value = math.log(self.return_probability(s.turns, s.branch, s.depth, s.out)) + s.used
        owner, shared, sweep = self._owner, self._shared, self._sweep
        since, revived, written = self._since, self._revived, self._written
        kept = sweep.kept if sweep is not None else ()
        for h in hashes:
            other = owner.get(h)
            if other is not s:
                if (  # NOTE: _doomed inlined, as in _prune
                    other is not None
                    and sweep is not None
                    and (other.last < since or other in revived)
                    and h not in written
                    and h not in kept
                ):
                    other = None  # as if the running prune had dropped it already
                    shared.discard(h)
                    sweep.staying -= 1
                if other is not None and other is not parent:  # a branch keeps its parent's prefix private
                    shared.add(h)
                owner[h] = s
        if sweep is not None:
            self._written.update(hashes)
        self.tails.record(hashes)
        self._clock += len(hashes)
        if self._sweep is None and (len(owner) > self._limit or self._clock - self._pruned_at > self._bound):
            self._start_prune()
        if self._sweep is not None:
            self._prune(self._sweep, len(hashes))

    def return_probability(
        self, turns: int, branch: bool = False, depth: int | None = None, out: int | None = None
    ) -> float:
        """P(a session at ``turns`` comes back within the horizon), learned so far (1/2 before any data),
        apart for sessions begun as a branch. At turn 1, with ``depth`` (its prompt's blocks), that of first
        turns of about that length, and with ``out`` (its output bucket) that of first turns asking for about
        as many tokens; each once :data:`CELL_MIN` first turns were seen there, combined as independent
        evidence (log-odds added, less the first turns' shared prior)."""
        b = _bucket(turns, branch)
        p = (self.returns[b] + 1) / (self.starts[b] + 2)
        if turns != 1:
            return p
        logit = prior = _logit(p)
        if depth is not None:
            c = _first_cell(branch, depth)
            if self.first_starts[c] >= CELL_MIN:
                logit = _logit((self.first_returns[c] + 1) / (self.first_starts[c] + 2))
        if out is not None:
            o = out + (OUT_BUCKETS if branch else 0)
            if self.out_starts[o] >= CELL_MIN:
                logit += _logit((self.out_returns[o] + 1) / (self.out_starts[o] + 2)) - prior
        return 1.0 / (1.0 + math.exp(-logit))

    @staticmethod
    def _count(s: Session, per_turn: list[int], per_first: list[int], per_out: list[int]) -> None:
        """Count ``s`` at its last turn (``s.turns``, ``s.depth``, ``s.out``) in a per-turn, a first-turn
        length and a first-turn output table."""
        per_turn[_bucket(s.turns, s.branch)] += 1
        if s.turns == 1:
            per_first[_first_cell(s.branch, s.depth)] += 1
            per_out[s.out + (OUT_BUCKETS if s.branch else 0)] += 1

    def value(self, h: int) -> float | None:
        """The log-form expected return of position ``h`` (None without a record)."""
        s = self._owner.get(h)
        return None if s is None else s.value

    def _named_session(self, name: str) -> Session:
        s = self._named.get(name)
        if s is None:
            s = self._named[name] = Session()
        else:
            self._named.move_to_end(name)  # observed now: the prune forgets the oldest first
            self._came_back(s)
        return s

    def _deepest_recorded(self, hashes: Sequence[int]) -> int:
        """How many leading positions of ``hashes`` have a record (that a running prune keeps: see
        :meth:`_doomed`), by binary search: records are prefix-closed (whole prompts are recorded, and cached,
        waiting and recent positions are prefix-closed sets)."""
        owner, lo, hi, sweeping = self._owner, 0, len(hashes), self._sweep is not None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            h = hashes[mid - 1]
            s = owner.get(h)
            if s is not None and not (sweeping and self._doomed(h, s)):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _doomed(self, h: int, s: Session) -> bool:
        """The running prune drops the record of ``h`` (for ``s``) when it sweeps it: a session last seen
        before the previous prune started (before this one, or seen since but for the first time: revived)
        and a position neither cached nor waiting at the start nor written since. NOTE: observe reads such a record
        as dropped already, so that it decides as when the whole table was swept at once."""
        doomed = s.last < self._since or s in self._revived
        return doomed and h not in self._written and h not in self._sweep.kept  # type: ignore[union-attr]

    def _chained_session(self, hashes: Sequence[int], lo: int) -> tuple[Session, Session | None]:
        """(session, parent). The session whose last prompt this one extends (covers every full block of: a
        chat's next turn repeats the previous prompt), parent None. Else, if it covers at least 3/4 of that
        prompt (an edited turn, an agent forking from an earlier step, a new question on the same document, or
        another chat on a long system prompt: the prompt cannot tell them apart), a new branch of it, whose
        return probabilities are learned apart and which keeps the common prefix private to the two (the
        parent). Else a new session. ``lo``: the recorded leading positions."""
        if lo and hashes[lo - 1] not in self._shared:
            s = self._owner[hashes[lo - 1]]
            if lo >= s.depth and hashes[s.depth - 1] == s.tail:
                self._came_back(s)
                return s, None
            if lo >= s.depth - s.depth // 4:
                return Session(branch=True), s
        return Session(), None

    def _came_back(self, s: Session) -> None:
        """``s`` is used again: a return of its last turn if within the horizon."""
        if s.turns and self._clock - s.last <= self._horizon:
            self._count(s, self.returns, self.first_returns, self.out_returns)

    def _start_prune(self) -> None:
        """Snapshot the records and what is cached or waiting for a sliced prune (:mod:`prism_cache.sweep`),
        and forget the named sessions not seen for a bound (the oldest first: O(forgotten))."""
        self._sweep = Sweep(self._owner, self._kept(), values=True)
        self._since, self._pruned_at = self._pruned_at, self._clock
        named, cut = self._named, self._clock - self._bound
        while named and next(iter(named.values())).last < cut:
            named.popitem(last=False)

    def _prune(self, sweep: Sweep, blocks: int) -> None:
        """Drop a slice's records of positions neither cached nor waiting at the start nor recorded by a
        session observed since the previous prune started; at the end, the next prune comes after half the
        bound of new records (or a bound of observed blocks): O(1) amortized per observed block."""
        owner, since, revived, written, kept = self._owner, self._since, self._revived, self._written, sweep.kept
        # NOTE: _doomed inlined (a call per key doubled the sweep's cost). A record's session may have changed
        # since the start, but only to one observed since, which wrote it (in _written); and only a sweep
        # deletes records, so every snapshot key is still there
        dropped = [
            h
            for h, s in sweep.take_items(blocks)
            if (s.last < since or (revived and s in revived)) and h not in written and h not in kept
        ]
        sweep.staying -= len(dropped)
        for h in dropped:
            del owner[h]
        self._shared.difference_update(dropped)
        self.tails.forget(dropped)
        self._notify(dropped)
        if not sweep:
            self._sweep = None
            self._written, self._revived = set(), set()
            self._limit = max(self._bound, sweep.staying + self._bound // 2)

    def __len__(self) -> int:
        """Positions with a record."""
        return len(self._owner)


def _bucket(turns: int, branch: bool) -> int:
    return min(turns, TURN_BUCKETS) - 1 + (TURN_BUCKETS if branch else 0)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _first_cell(branch: bool, depth: int) -> int:
    return min(LENGTH_BUCKETS - 1, depth.bit_length() >> 1) + (LENGTH_BUCKETS if branch else 0)
