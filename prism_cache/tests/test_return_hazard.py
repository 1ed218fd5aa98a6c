"""The return hazard (prism_cache.return_hazard) against a known gap distribution: the oracle is the truth."""

from __future__ import annotations

import random

from prism_cache.return_hazard import ReturnHazard
from prism_cache.session_return import Session

H = 1000.0  # the horizon, clock ticks


def _learn(p_return: tuple[float, ...], lo: float, hi: float, n: int = 3000) -> ReturnHazard:
    """Sessions of each group start every H/40 ticks; each comes back with its group's probability, at a gap
    uniform on [lo, hi) (a hazard that is 0, rises, then is 0 again: no exponential has that shape)."""
    rng = random.Random(7)
    hz = ReturnHazard(H, len(p_return))
    events: list[tuple[float, int, Session]] = []  # (clock, 0 start / 1 return, session)
    for i in range(n):
        for g, p in enumerate(p_return):
            s = Session()
            s.born, s.group = i * H / 40, g
            events.append((s.born, 0, s))
            if rng.random() < p:
                events.append((s.born + rng.uniform(lo, hi), 1, s))
    events.sort(key=lambda e: (e[0], e[1]))
    for now, kind, s in events:
        hz.advance(int(now))
        if kind == 0:
            s.turns = 1
            hz.start(s, s.group)
        else:
            hz.returned(s, int(now))
            s.turns += 1  # came back: its queue entry is void
    return hz


def test_the_learned_hazard_matches_a_known_gap_distribution() -> None:
    # the gaps fill exactly one age bucket, [2H, 2 sqrt 2 H): a session waiting at 1.83 H comes back within the
    # horizon with its group's return probability; one waiting at 0 or at 3 H (past the gaps) never does
    edges = ReturnHazard(H, 1).edges
    k = min(range(len(edges)), key=lambda i: abs(edges[i] - 2 * H))
    lo, hi = edges[k], edges[k + 1]
    hz = _learn((0.3, 0.8), lo, hi)
    for g, p in enumerate((0.3, 0.8)):
        assert hz.probability(g, 0.0) < 0.03
        assert abs(hz.probability(g, hi - H) - p) < 0.06  # the whole gap bucket is within the horizon
        assert hz.probability(g, 3 * H) < 0.03
    # the rise and fall that decaying keys cannot express
    assert hz.probability(1, 0.0) < hz.probability(1, lo - H / 2) < hz.probability(1, hi - H)
    assert hz.probability(1, hi - H) > hz.probability(1, hi - H / 2) > hz.probability(1, hi)


def test_ages_cross_every_boundary_once_and_a_return_voids_the_session_in_its_queue() -> None:
    hz = ReturnHazard(H, 1)
    s, t = Session(), Session()
    s.turns = t.turns = 1
    hz.start(s, 0)
    t.born = 5.0
    hz.start(t, 0)
    now = int(1.5 * H)
    moved = hz.advance(now)
    inner = hz.edges[1:-1]  # boundaries into a bucket (past the last one a session is dropped)
    assert len(moved) == sum(1 for e in inner if e <= now) + sum(1 for e in inner if t.born + e <= now)
    hz.returned(s, now)
    s.turns += 1
    assert hz.returns[0][s.age] == 1 and hz.edges[s.age] <= now < hz.edges[s.age + 1]
    age = s.age
    hz.advance(int(40 * H))
    assert s.age == age and t.age == len(hz.edges) - 1  # s left its queue; t ran out the span
    assert abs(sum(hz.exposure[0]) - (now + hz.edges[-1])) < 1e-6 * H  # s until it came back, t all of it
