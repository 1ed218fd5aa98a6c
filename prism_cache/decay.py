"""Exponentially decayed use counts in log form, on a logical clock (shared by tree heat and popularity).

A count whose every use halves after ``half_life`` cache capacities of clock ticks is stored as
``ln(decayed count) + clock / tau`` with ``tau = half_life * capacity / ln 2``. Two stored values compare as
their decayed counts at any common time, so nothing is swept as the clock advances; one more use at time
``now`` (= ``clock / tau``) turns a stored ``v`` into ``now + ln(1 + exp(v - now))`` (:func:`add_use`).
"""

from __future__ import annotations

import math

LN2 = math.log(2)


def decay_tau(half_life: float, capacity_blocks: int) -> float:
    """Clock ticks per unit of log count. Raises ValueError if ``half_life`` <= 0."""
    if half_life <= 0:
        raise ValueError(f"half_life must be > 0, got {half_life}")
    return half_life * max(1, capacity_blocks) / LN2


def add_use(stored: float, now: float) -> float:
    """``stored`` (log form) plus one use made at ``now``."""
    return now + math.log1p(math.exp(stored - now))
