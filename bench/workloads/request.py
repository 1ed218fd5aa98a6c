"""A workload request: when it arrives, which segments its prompt is made of, how many tokens it generates.

Segments are the unit of sharing: two requests whose prompts start with the same segment ids start with the
same tokens (see :mod:`bench.workloads.token_ids` for the simulator and :mod:`bench.workloads.prompts` for
live text).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

Segment = tuple[str, int]  # (segment id, n_tokens); equal ids always mean equal token sequences


@dataclass(frozen=True)
class WorkloadRequest:
    arrival: float  # seconds from the start of the run
    segments: tuple[Segment, ...]
    output_len: int
    output_segment: str | None = None  # the id later prompts give its output (a chat's answer, an agent's action)

    @property
    def prompt_len(self) -> int:
        return sum(n for _, n in self.segments)


def poisson_arrivals(n: int, qps: float, seed: int) -> list[float]:
    """``n`` arrival times (seconds, increasing) of a Poisson process at rate ``qps``."""
    if qps <= 0:
        raise ValueError("qps must be > 0")
    rng = random.Random(seed)
    t, times = 0.0, []
    for _ in range(n):
        t += rng.expovariate(qps)
        times.append(t)
    return times


def poisson_units(
    count: int, rate: float, seed: int, expand: Callable[[int, float, random.Random], list[WorkloadRequest]]
) -> list[list[WorkloadRequest]]:
    """``count`` units (sessions, agent tasks) starting as a Poisson process at ``rate``;
    ``expand(index, start, rng)`` gives a unit's timed requests (one rng shared: deterministic for a seed).
    One list per unit, in the order they start."""
    rng = random.Random(seed)
    start, out = 0.0, []
    for i in range(count):
        start += rng.expovariate(rate)
        out.append(expand(i, start, rng))
    return out


def poisson_started(
    count: int, rate: float, seed: int, expand: Callable[[int, float, random.Random], list[WorkloadRequest]]
) -> list[WorkloadRequest]:
    """:func:`poisson_units`' requests, all of them in arrival order."""
    return sorted((r for unit in poisson_units(count, rate, seed, expand) for r in unit), key=lambda r: r.arrival)


def with_arrivals(requests: Sequence[WorkloadRequest], times: Sequence[float]) -> list[WorkloadRequest]:
    """The same requests (same order, same content) re-timed: so a QPS sweep replays one workload."""
    if len(times) != len(requests):
        raise ValueError("one arrival time per request")
    return [replace(r, arrival=t) for r, t in zip(requests, times)]


def at_qps(requests: Sequence[WorkloadRequest], qps: float, seed: int) -> list[WorkloadRequest]:
    """Poisson arrivals at ``qps`` for the requests in their order."""
    return with_arrivals(requests, poisson_arrivals(len(requests), qps, seed))


def offered_qps(requests: Sequence[WorkloadRequest]) -> float:
    """Mean arrival rate of a timed workload (requests per second)."""
    span = requests[-1].arrival - requests[0].arrival if len(requests) > 1 else 0.0
    return (len(requests) - 1) / span if span > 0 else float("inf")
