"""Per-request records and the summary every run reports (simulated or live), per configuration and load.

TTFT is from arrival to the first token; queue wait from arrival to admission into a prefill batch (simulator
only); hit rate is exact-prefix, token-weighted: prompt tokens served from the prefix cache over prompt tokens
queried, from the scheduler's ``cache_stats`` (simulator) or the two ``/metrics`` counters (live).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class RequestRecord:
    arrival: float
    first_token: float | None  # None: failed before its first token
    finished: float | None
    prompt_len: int
    output_tokens: int
    admitted: float | None = None  # when a prefill batch took it (simulator)
    error: str | None = None
    itl: tuple[float, ...] = ()  # inter-token latencies (live)
    cached_tokens: int | None = None  # prompt tokens served by the prefix cache (simulator)

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrival


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (numpy's default), NaN for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def measured(records: Sequence[RequestRecord], warmup: float) -> list[RequestRecord]:
    """The records left after dropping the first ``warmup`` fraction of arrivals (the cold-cache start)."""
    ordered = sorted(records, key=lambda r: r.arrival)
    return ordered[int(len(ordered) * warmup) :]


def record_hit_rate(records: Sequence[RequestRecord]) -> float:
    """Token-weighted hit rate of records that know their cached tokens (the simulator's); NaN if none."""
    known = [r for r in records if r.cached_tokens is not None]
    prompt = sum(r.prompt_len for r in known)
    return sum(r.cached_tokens or 0 for r in known) / prompt if prompt else math.nan


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summarize(records: Sequence[RequestRecord], hit_rate: float) -> dict[str, float | int]:
    """The metrics of one run: TTFT percentiles and mean (s), hit rate, throughput (requests/s and output
    tokens/s over the span from the first arrival to the last finish), queue wait mean/P99/max (s), errors."""
    ok = [r for r in records if r.error is None and r.first_token is not None]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    waits = [r.admitted - r.arrival for r in ok if r.admitted is not None]
    ends = [r.finished for r in ok if r.finished is not None]
    span = max(ends) - min(r.arrival for r in records) if ends else math.nan
    itls = [x for r in ok for x in r.itl]
    out: dict[str, float | int] = {f"ttft_p{p}": percentile(ttfts, p) for p in PERCENTILES}
    out.update(
        ttft_mean=_mean(ttfts),
        hit_rate=hit_rate,
        requests=len(records),
        errors=len(records) - len(ok),
        throughput_rps=len(ends) / span if span and span > 0 else math.nan,
        throughput_tok_s=sum(r.output_tokens for r in ok) / span if span and span > 0 else math.nan,
        queue_wait_mean=_mean(waits),
        queue_wait_p99=percentile(waits, 99),
        queue_wait_max=max(waits) if waits else math.nan,
        itl_mean=_mean(itls),
    )
    return out
