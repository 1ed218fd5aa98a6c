"""DART (PRISM): demand-aware retention, ``P = 1e6·active + 1e5·planned + 1·queued``, then predicted and
historical demand.

Per node (per tail block, as eviction cuts tail blocks first): active = requests running on it (its lock
count; locked nodes are never evicted, so active demand is absolute protection), planned = requests of the batch
being planned this step, queued = waiting requests whose prompt covers the block. The weights are the paper's
(``w_a = 1e6, w_n = 1e5, w_g = 1``); with fewer than 10 planned users the order is lexicographic.

Among nodes of equal demand (mostly: no demand at all, the common case below the load knee, where the queue
is a few requests deep) the paper leaves the order open. Our choice [INF], one score, then recency: the
node's decayed use count (``Node.heat``: the request that cached it, then every match through it; half-life
:attr:`DartParams.heat_half_life`), plus :attr:`DartParams.popularity_weight` times the segment popularity of
the tail block's path (:mod:`prism_cache.popularity`: how often the contents along that path were asked for,
anywhere in a prompt: the expected reuse of shared segments), plus :attr:`DartParams.session_weight` times
the expected return of the session that last used the block (:mod:`prism_cache.session_return`: a chat's or
an agent's next turn, demand beyond the queue), and the same weight times the log-probability that a reuse
reaches the node's last block when it is one of the last 64 of a prompt (:mod:`prism_cache.tail_reach`: tails
that reuses stop short of, such as a question after a shared document, rank low: admission control). So
active > planned > queued > predicted and history. A block only its own session has used is reused only if
that session comes back: its heat counts the session's turns, not demand, so it counts one use at the
session's last turn instead; so does the popularity of its contents once the session has come back or when it
is a branch (before, that popularity is other prompts' demand: a RAG prompt's new order of popular passages).
With :attr:`DartParams.length_penalty` (off by default) heat is per block, so long single-use tails go before
short shared segments. What each term is worth, measured:
docs/performance.md, "Why the cache code looks the way it does", and docs/benchmarks.md, "Demand beyond the
queue".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from prism_cache.demand import Demand
from prism_cache.watched import Watched
from prism_cache.policies.base import Key
from prism_cache.popularity import UNSEEN

if TYPE_CHECKING:
    from prism_cache.node import Node
    from prism_cache.session_return import Session

W_ACTIVE = 1e6
W_PLANNED = 1e5
W_QUEUED = 1.0
LN4 = math.log(4)


@dataclass(frozen=True)
class DartParams:
    """``dart_*`` knobs."""

    PREFIX: ClassVar[str] = "dart_"
    # tree heat (DART's tie-break): cache capacities of inserted blocks after which a past use counts half;
    # also the half-life of segment popularity, in capacities of enqueued blocks
    heat_half_life: float = 1.5
    popularity_weight: float = 4.0  # weight of segment popularity in DART's tie-break; 0 = off (not counted)
    # weight of a session's expected return (prism_cache.session_return) in the tie-break; 0 = off
    session_weight: float = 4.0
    length_penalty: float = 0.0  # weight of heat's per-block normalization (ln of the length, in 4x steps)


class DartPolicy:
    name = "dart"
    stable_keys = True  # heat is stored in a time-invariant log form (radix_tree) and only grows on a match

    def __init__(
        self,
        demand: Demand,
        popularity_weight: float = DartParams.popularity_weight,
        session_weight: float = 0.0,
        length_penalty: float = DartParams.length_penalty,
    ) -> None:
        """``popularity_weight`` > 0 needs ``demand.popularity``, ``session_weight`` > 0 ``demand.sessions``
        (ValueError otherwise); 0 ignores it."""
        # NOTE: the tables' lookups, bound once: key() runs for every unlocked leaf when an eviction heap is built
        self._planned, self._queued = demand.planned.get, demand.queued.get
        self._tables: tuple[Watched, ...] = (demand.planned, demand.queued)
        # NOTE: a position's popularity is value_of(record_of(h)), read through two bound lookups (the key is the
        # eviction hot path); without popularity, record_of always misses and the term is 0
        self._record_of, self._value_of = {}.get, None
        self._weight, self._unseen = popularity_weight, popularity_weight * UNSEEN
        if popularity_weight:
            if demand.popularity is None:
                raise ValueError("dart_popularity_weight > 0 needs a SegmentPopularity in Demand")
            self._record_of, self._value_of = demand.popularity.record_of, demand.popularity.value_of
            self._tables += (demand.popularity,)
        self._session_of: Callable[[int], Session | None] = {}.get
        self._tail_of: Callable[[int], float | None] = {}.get
        self._shared: Container[int] = ()
        self._session_weight, self._no_session = session_weight, session_weight * UNSEEN
        if session_weight:
            if demand.sessions is None:
                raise ValueError("dart_session_weight > 0 needs a SessionReturn in Demand")
            self._session_of, self._shared = demand.sessions.record_of, demand.sessions.shared
            self._tail_of = demand.sessions.tails.value_of
            self._tables += (demand.sessions,)
        self._length_step = LN4 * length_penalty

    def demand_tables(self) -> tuple[Watched, ...]:
        return self._tables

    def key(self, node: Node, n_blocks: int, tick: int) -> Key:
        """(demand priority, log of decayed uses + weight x path popularity + weight x (session return + log
        tail reach), recency), a block only its session uses counting one use at that session's last turn (and
        its contents' popularity, at a first turn).
        Never increases with n_blocks as far as demand, heat and tail reach go (queued demand never grows
        along a prompt's chain; per-block heat falls as the node gets longer; reuses reach a prompt's later
        blocks less often). Path popularity is non-increasing along each prompt when recorded,
        but positions recorded by different prompts can drift apart as their contents get retrieved elsewhere,
        and the positions of one node can belong to different sessions (or be shared by several); the eviction
        cut (a binary search over this contract) may then take a few tail blocks more or fewer than
        the exact rule would (only tail blocks, and the same ones in the persistent heap as in a rebuilt one).
        The length is rounded down to a power of four so that the key of a node being cut changes only
        O(log n) times, in steps of 4x: otherwise two long tails of equal heat are cut one block each in turn,
        and every cut costs (docs/performance.md)."""
        h = node.hashes[n_blocks - 1]
        demand = W_ACTIVE * node.lock + W_PLANNED * self._planned(h, 0) + W_QUEUED * self._queued(h, 0)
        penalty = self._length_step * (n_blocks.bit_length() >> 1)
        tail = self._tail_of(h)
        if tail is not None:
            penalty -= self._session_weight * tail  # a tail that reuses seldom reach (ln P < 0) goes first
        session = self._session_of(h)
        if session is not None and h not in self._shared:
            # NOTE: a block only its session uses is reused only when the session comes back: its uses count
            # that session's turns, not more demand; one use at its last turn. Once it has come back (or as a
            # branch, which shares its parent's prefix), so does the popularity of its contents; before, that
            # popularity is demand from other prompts (a passage others retrieve) and counts
            if session.turns > 1 or session.branch:
                popularity = self._weight * session.used
            else:
                record = self._record_of(h)
                popularity = self._unseen if record is None else self._weight * self._value_of(record)
            history = session.heat + popularity + self._session_weight * session.value
            return (demand, history - penalty, node.last_access)
        record = self._record_of(h)
        history = (
            node.heat
            - penalty
            + (self._unseen if record is None else self._weight * self._value_of(record))
            + (self._no_session if session is None else self._session_weight * session.value)
        )
        return (demand, history, node.last_access)
