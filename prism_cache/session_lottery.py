"""Session lottery: a stable pseudo-random rank per session, so a fraction of sessions stays cached for a whole
return gap (EXPERIMENT, behind the ``LOT`` / ``LOTG`` / ``LOTA`` environment switches of
:mod:`prism_cache.session_return`; docs/benchmarks.md, "Sixth pass").

With a key of ``ln P(return) + clock / tau`` every session of equal P is held for about the cache's residence
time, newest first: LRU on a loop larger than the cache, which evicts each session just before most of them
come back. Adding ``span * u`` (``u`` in [0, 1) drawn once per session from its key) to its clock makes the
sessions with a high ``u`` persist for up to ``span`` longer and those with a low ``u`` go early, as Belady
holds a subset for the whole gap. :func:`lottery` is the draw; :class:`GapMedian` learns the median return gap
(the span can be a multiple of it); :func:`best_span` picks the span from the learned gaps and the cache's
residence (``LOTA=1``): holding a session for ``T`` costs about ``T`` of cache time and catches ``G(T)`` of its
returns, so a lottery pays only where ``G(T) / T`` rises past the residence (a loop), never for a falling
hazard.
"""

from __future__ import annotations

import math

MASK = (1 << 64) - 1
GAP_BUCKETS = 48  # log2 buckets of return gaps in observed blocks


def lottery(key: int) -> float:
    """A stable value in [0, 1) for ``key`` (splitmix64 finaliser: independent of PYTHONHASHSEED)."""
    z = (key + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return ((z ^ (z >> 31)) >> 11) / float(1 << 53)


class GapMedian:
    """The median of observed return gaps (log2 buckets, geometric mid of the median's bucket)."""

    def __init__(self) -> None:
        self.counts = [0] * GAP_BUCKETS
        self.total = 0

    def add(self, gap: int) -> None:
        self.counts[min(GAP_BUCKETS - 1, max(0, gap).bit_length())] += 1
        self.total += 1

    def median(self, default: float) -> float:
        """The median gap, ``default`` before any return."""
        if not self.total:
            return default
        half, seen = self.total / 2, 0
        for b, c in enumerate(self.counts):
            seen += c
            if seen >= half:
                return 0.75 * (1 << b) if b else 0.5
        return default


SPANS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # candidate spans, in residence times
U_POINTS = 32


def gap_cdf(counts: list[int], total: int, t: float) -> float:
    """Share of observed return gaps <= ``t`` (log2 buckets, linear in log2 within a bucket)."""
    if total <= 0 or t <= 0:
        return 0.0
    x = max(0.0, math.log2(t) + 1.0)  # bucket b holds [2^(b-1), 2^b): position b - 1 + frac
    b = int(x)
    below = sum(counts[: min(b, len(counts))])
    inside = counts[b] * (x - b) if b < len(counts) else 0
    return min(1.0, (below + inside) / total)


def best_span(counts: list[int], total: int, residence: float, gain: float = 1.02) -> float:
    """The lottery span (ticks) that catches the most returns for the same cache time, given the gap
    distribution and the mean residence ``residence`` (ticks) of a session's blocks: span ``S`` holds a
    session drawn ``u`` for ``max(0, L + S u)``, ``L`` set so that the mean hold is ``residence``; the
    returns caught are ``mean G(hold)``. 0 unless a span beats no span by the factor ``gain``."""
    if total < 32 or residence <= 0:
        return 0.0
    us = [(i + 0.5) / U_POINTS for i in range(U_POINTS)]
    best, best_value = 0.0, gap_cdf(counts, total, residence) * gain
    for k in SPANS[1:]:
        s = k * residence
        top = residence - s / 2 if s <= 2 * residence else math.sqrt(2 * residence * s) - s
        value = sum(gap_cdf(counts, total, top + s * u) for u in us if top + s * u > 0) / U_POINTS
        if value > best_value:
            best, best_value = s, value
    return best
