"""Return hazard: *when* a waiting session comes back, learned online as a life table on the clock of observed
prompt blocks (the clock of :mod:`prism_cache.session_return`).

A session whose last turn was observed at clock ``t`` has age ``a = clock - t``. Ages are cut into buckets:
``[0, e1)``, then log-spaced boundaries from :data:`AGE_FIRST` horizons on, :data:`AGE_RATIO` apart, to
:data:`AGE_SPAN` horizons (a return later than that counts as none). Per group of sessions (the caller's:
turn bucket, branch or not) and age bucket ``j`` the table counts the returns ``d`` whose gap fell in ``j``
and the exposure ``T``: the clock every session spent in ``j`` before it came back or moved on. Nothing is
assumed of the gap distribution's shape (a chat's think time rises and then falls; an agent's tool latency
only falls):

- the hazard of bucket ``j``, pooled over groups (returns per clock tick): ``(d_j + l0 w_j) / (T_j + w_j)``,
  one pseudo-session of exposure at the prior rate ``l0`` (a return within the horizon with probability 1/2);
  ``Lambda`` is its integral, piecewise linear in the age;
- each group scales it by its own relative rate ``rho = (D + 1) / (E + 1)``: its returns over those the pooled
  hazard expects from its own exposure (proportional hazards, so sparse groups share the shape);
- a waiting session at age ``a`` then comes back within the horizon ``H`` with probability
  ``Q(a) = 1 - exp(-rho * f * (Lambda(a + H) - Lambda(a)))`` (``f``: the caller's per-session factor).

``Q`` is not monotone in the age, so a session's value is taken again whenever its age crosses a boundary:
:meth:`advance` moves sessions across them as the clock goes on, oldest first, from one FIFO per bucket (the
sessions of a bucket entered it in the order of their last turns), O(1) per crossing and at most one crossing
per boundary per turn. The same crossings count the exposure.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prism_cache.session_return import Session

AGE_FIRST = 1 / 16  # the first boundary, in horizons
AGE_RATIO = 2**0.5  # between boundaries
AGE_SPAN = 32.0  # horizons: the oldest age tracked


class ReturnHazard:
    """Args: horizon: ``H``, clock ticks (> 0); groups: how many groups the caller's sessions fall in."""

    def __init__(self, horizon: float, groups: int) -> None:
        edges = [0.0, AGE_FIRST * horizon]
        while edges[-1] < AGE_SPAN * horizon * (1 - 1e-9):
            edges.append(min(edges[-1] * AGE_RATIO, AGE_SPAN * horizon))
        self.edges = edges  # bucket j is [edges[j], edges[j + 1])
        self.horizon = horizon
        n = len(edges) - 1
        self._widths = [edges[j + 1] - edges[j] for j in range(n)]
        self._prior = math.log(2) / horizon
        self.returns = [[0] * n for _ in range(groups)]
        self.exposure = [[0.0] * n for _ in range(groups)]
        # (last turn's clock, session, its turns then): an entry is void once the session came back
        self._queues: list[deque[tuple[int, Session, int]]] = [deque() for _ in range(n)]
        self._cum: list[float] = []  # Lambda at each edge
        self._rho: list[float] = []
        self._stale = True

    def start(self, s: Session, group: int) -> None:
        """``s`` has just been observed (``s.last`` is now): age 0, in ``group``."""
        s.group, s.age = group, 0
        self._queues[0].append((s.born, s, s.turns))

    def returned(self, s: Session, now: int) -> None:
        """``s``, started before, comes back at clock ``now``: a return in its age bucket (none past the span)."""
        j = s.age
        if j >= len(self._widths):
            return
        gap = now - s.born
        self.exposure[s.group][j] += gap - self.edges[j]
        self.returns[s.group][j] += 1
        self._stale = True

    def advance(self, now: int) -> list[Session]:
        """Move every session whose age reached its bucket's end at clock ``now`` on (counting the exposure);
        returns the sessions that moved into a bucket (those past the span are dropped)."""
        moved: list[Session] = []
        edges, last = self.edges, len(self._widths) - 1
        for j, queue in enumerate(self._queues):
            end = now - edges[j + 1]  # sessions last seen at or before this left bucket j
            while queue and queue[0][0] <= end:
                entry = queue.popleft()
                _, s, stamp = entry
                if s.turns != stamp or s.age != j:
                    continue  # came back since
                self.exposure[s.group][j] += self._widths[j]
                self._stale = True
                s.age = j + 1
                if j < last:
                    self._queues[j + 1].append(entry)
                    moved.append(s)
        return moved

    def probability(self, group: int, age: float, factor: float = 1.0) -> float:
        """``Q``: P(a session of ``group`` waiting at ``age`` comes back within the horizon)."""
        if self._stale:
            self._refit()
        dl = self._cumulative(age + self.horizon) - self._cumulative(age)
        return -math.expm1(-self._rho[group] * factor * dl)

    def ever(self, group: int, factor: float = 1.0) -> float:
        """P(a session of ``group`` comes back within the span at all)."""
        if self._stale:
            self._refit()
        return -math.expm1(-self._rho[group] * factor * self._cum[-1])

    def index(self, group: int, age: float, factor: float = 1.0) -> float:
        """The best rate of returns per tick of keeping a session of ``group`` waiting at ``age``, over any
        time it might be kept: max over T of P(back within T) / E[ticks kept waiting within T], times the
        horizon (a Gittins-like index of the cache space it holds; about P(back within H) when returns do not
        depend on the age)."""
        if self._stale:
            self._refit()
        edges, cum, widths = self.edges, self._cum, self._widths
        scale = self._rho[group] * factor
        if age >= edges[-1]:
            return 1e-12
        j = 0
        while edges[j + 1] <= age:
            j += 1
        rate = scale * (cum[j + 1] - cum[j]) / widths[j]
        best, surv, dropped, held, x = rate, 1.0, 0.0, 0.0, age
        for k in range(j, len(widths)):
            r = scale * (cum[k + 1] - cum[k]) / widths[k]
            length = edges[k + 1] - x
            end = surv * math.exp(-r * length)
            held += (surv - end) / r if r > 1e-15 else surv * length
            dropped += surv - end
            surv, x = end, edges[k + 1]
            if held > 0 and dropped / held > best:
                best = dropped / held
        return best * self.horizon

    def _cumulative(self, age: float) -> float:
        edges, cum = self.edges, self._cum
        if age >= edges[-1]:
            return cum[-1]
        lo, hi = 0, len(edges) - 1  # the bucket holding age: edges[lo] <= age < edges[lo + 1]
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if edges[mid] <= age:
                lo = mid
            else:
                hi = mid
        rate = (cum[lo + 1] - cum[lo]) / self._widths[lo]
        return cum[lo] + rate * (age - edges[lo])

    def _refit(self) -> None:
        n, widths = len(self._widths), self._widths
        d = [sum(g[j] for g in self.returns) for j in range(n)]
        t = [sum(g[j] for g in self.exposure) for j in range(n)]
        rate = [(d[j] + self._prior * widths[j]) / (t[j] + widths[j]) for j in range(n)]
        cum = [0.0]
        for j in range(n):
            cum.append(cum[-1] + rate[j] * widths[j])
        self._cum = cum
        self._rho = [
            (sum(ret) + 1) / (sum(r * x for r, x in zip(rate, exp)) + 1)
            for ret, exp in zip(self.returns, self.exposure)
        ]
        self._stale = False
