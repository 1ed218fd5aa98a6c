"""Tables of a comparison: each metric per load and configuration, with its ratio to the baselines
``fcfs+lru`` (TGI) and ``lpm+lru`` (SGLang), and the headline the paper reports: the average over the QPS
points of each point's P99 TTFT, and of the hit rate, for PRISM against the strongest baseline (the lowest
average P99)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from bench.configs import BASELINES, PRISM, is_baseline

Row = dict[str, object]
METRICS = (
    ("ttft_p50", "TTFT P50 (s)"),
    ("ttft_p90", "TTFT P90 (s)"),
    ("ttft_p95", "TTFT P95 (s)"),
    ("ttft_p99", "TTFT P99 (s)"),
    ("ttft_mean", "TTFT mean (s)"),
    ("hit_rate", "exact-prefix hit rate"),
    ("throughput_rps", "throughput (req/s)"),
    ("queue_wait_mean", "queue wait mean (s)"),
    ("queue_wait_max", "longest queue wait (s)"),
    ("errors", "errors"),
)
SHORT = {"fcfs+lru": "F", "lpm+lru": "L"}


def _f(x: object) -> float:
    return float(x) if isinstance(x, (int, float)) else math.nan


def _by_point(rows: Sequence[Row]) -> dict[tuple[object, str], Row]:
    return {(r["qps"], str(r["config"])): r for r in rows}


def _configs(rows: Sequence[Row]) -> list[str]:
    return list(dict.fromkeys(str(r["config"]) for r in rows))


def _cell(value: float, ratios: list[str]) -> str:
    text = f"{value:.4g}"
    return f"{text} ({', '.join(ratios)})" if ratios else text


def metric_table(rows: Sequence[Row], metric: str, title: str) -> str:
    """One metric: a line per QPS, a column per configuration, ratios to the baselines present (x F, x L)."""
    points, configs = _by_point(rows), _configs(rows)
    qps_list = list(dict.fromkeys(r["qps"] for r in rows))
    width = max(24, *(len(c) + 2 for c in configs))
    lines = [title, "qps".ljust(8) + "".join(c.ljust(width) for c in configs)]
    for qps in qps_list:
        cells = []
        for c in configs:
            value = _f(points.get((qps, c), {}).get(metric))
            ratios = []
            for base in BASELINES:
                ref = _f(points.get((qps, base), {}).get(metric))
                if c != base and (qps, base) in points and ref and not math.isnan(ref):
                    ratios.append(f"{value / ref:.2f}x{SHORT[base]}")
            cells.append(_cell(value, ratios).ljust(width))
        lines.append(str(qps).ljust(8) + "".join(cells))
    return "\n".join(lines)


def averages(rows: Sequence[Row], metric: str) -> dict[str, float]:
    """Each configuration's mean over its QPS points of ``metric``."""
    out: dict[str, list[float]] = {}
    for r in rows:
        out.setdefault(str(r["config"]), []).append(_f(r.get(metric)))
    return {c: sum(v) / len(v) for c, v in out.items()}


def headline(rows: Sequence[Row], prism: str = PRISM) -> dict[str, object] | None:
    """PRISM against the strongest baseline (the configuration without qas or dart with the lowest average
    per-QPS P99 TTFT): the relative change of that average (negative = PRISM faster) and the hit-rate
    difference in points. None without both."""
    p99, hits = averages(rows, "ttft_p99"), averages(rows, "hit_rate")
    others = {c: v for c, v in p99.items() if c != prism and is_baseline(c)}
    if prism not in p99 or not others:
        return None
    best = min(others, key=lambda c: others[c])
    return {
        "prism": prism,
        "strongest_baseline": best,
        "avg_p99_prism": p99[prism],
        "avg_p99_baseline": p99[best],
        "p99_change_pct": 100.0 * (p99[prism] / p99[best] - 1.0),
        "hit_rate_prism": hits[prism],
        "hit_rate_baseline": hits[best],
        "hit_rate_delta_points": 100.0 * (hits[prism] - hits[best]),
    }


def render(rows: Sequence[Row]) -> str:
    """All metric tables and the headline, as printed by ``prism-bench compare``."""
    parts = [metric_table(rows, m, t) for m, t in METRICS if any(not math.isnan(_f(r.get(m))) for r in rows)]
    h = headline(rows)
    if h is not None:
        parts.append(
            f"{h['prism']} vs strongest baseline {h['strongest_baseline']}: average per-QPS P99 TTFT "
            f"{h['avg_p99_prism']:.4g}s vs {h['avg_p99_baseline']:.4g}s ({h['p99_change_pct']:+.1f}%), "
            f"hit rate {100 * h['hit_rate_prism']:.1f}% vs {100 * h['hit_rate_baseline']:.1f}% "
            f"({h['hit_rate_delta_points']:+.1f} points)"
        )
    return "\n\n".join(parts)
