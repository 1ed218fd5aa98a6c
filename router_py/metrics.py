"""Prometheus metrics in TGI's names and rendering (tgi-compat 3.9), written by hand.

Counters keep their raw names (no ``_total``); histograms with configured buckets (every ``*duration``,
``tgi_request_input_length``, ``tgi_request_generated_tokens``, ``tgi_request_max_new_tokens``,
``tgi_batch_next_size``) render as ``_bucket``/``_sum``/``_count``; any other observed name renders as a
summary with quantiles, as metrics-exporter-prometheus does. Everything runs on one asyncio loop, so plain
dicts suffice.
"""

from __future__ import annotations

import bisect
import copy
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LabelKey = tuple[tuple[str, str], ...]

SUMMARY_QUANTILES = (0.0, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0)
SUMMARY_WINDOW = 4096  # NOTE: recent observations kept per summary series; quantiles are over this window


def duration_buckets() -> list[float]:
    """35 geometric buckets from 0.00015 s, factor 1.5, computed as TGI does (0.0001 multiplied by 1.5 again
    and again), so every ``le`` label is TGI's to the last digit: ``0.00015 * 1.5**i`` differs in the last
    bit for 12 of the 35 (``le="0.00015"`` where TGI writes ``le="0.00015000000000000001"``), and series of
    the two would not add up ``by (le)`` nor match a rule that names a bucket."""
    bounds, value = [], 0.0001
    for _ in range(35):
        value *= 1.5
        bounds.append(value)
    return bounds


_DURATION_BUCKETS = duration_buckets()  # shared by every duration histogram; never mutated


def linear_buckets(upper: int, count: int = 100) -> list[float]:
    return [upper / count * (i + 1) for i in range(count)]


@dataclass
class _Histogram:
    bounds: list[float]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * len(self.bounds)
        i = bisect.bisect_left(self.bounds, value)
        if i < len(self.counts):
            self.counts[i] += 1
        self.total += value
        self.n += 1


@dataclass
class _Summary:
    values: deque[float] = field(default_factory=lambda: deque(maxlen=SUMMARY_WINDOW))
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        self.values.append(value)
        self.total += value
        self.n += 1

    def quantile(self, q: float) -> float:
        ordered = sorted(self.values)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, int(math.ceil(q * len(ordered))) - 1 if q > 0 else 0)]


class Metrics:
    """The process's metric registry: ``inc`` counters, ``set`` gauges, ``observe`` histograms/summaries.

    ``max_input_tokens``/``max_total_tokens`` size the linear token-count buckets as TGI does; names and label
    values are the caller's (see tgi-compat 3.9 for TGI's fixed set).
    """

    def __init__(self, max_input_tokens: int = 4095, max_total_tokens: int = 4096) -> None:
        self._bucket_rules: dict[str, list[float]] = {
            "tgi_request_input_length": linear_buckets(max_input_tokens),
            "tgi_request_generated_tokens": linear_buckets(max_total_tokens),
            "tgi_request_max_new_tokens": linear_buckets(max_total_tokens),
            "tgi_batch_next_size": [float(i + 1) for i in range(1024)],
        }
        self._counters: dict[str, dict[LabelKey, float]] = {}
        self._gauges: dict[str, dict[LabelKey, float]] = {}
        self._histograms: dict[str, dict[LabelKey, _Histogram]] = {}
        self._summaries: dict[str, dict[LabelKey, _Summary]] = {}
        self._labels: dict[str, str] = {}  # added to every series written through this object

    def labeled(self, **labels: str) -> Metrics:
        """A view of this registry that adds ``labels`` to every series it writes or reads (one replica's
        batcher writes ``replica="g"``); both render the same series."""
        view = copy.copy(self)  # NOTE: shallow: the series dicts are shared, only the labels differ
        view._labels = {**self._labels, **labels}
        return view

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        series = self._counters.setdefault(name, {})
        key = self._key(labels)
        series[key] = series.get(key, 0.0) + value

    def counter(self, name: str, **labels: str) -> Callable[[float], None]:
        """One counter series (shown from now on, at 0) as an incrementer whose key is computed once: for
        per-step paths, where :meth:`inc`'s key building would dominate."""
        series = self._counters.setdefault(name, {})
        key = self._key(labels)
        series.setdefault(key, 0.0)

        def inc(value: float) -> None:
            series[key] += value

        return inc

    def observer(self, name: str, **labels: str) -> Callable[[float], None]:
        """One histogram or summary series as an observer whose key is computed once (as :meth:`counter`); the
        series is shown from its first observation on, as with :meth:`observe`."""
        key = self._key(labels)
        bound: list[_Histogram | _Summary] = []

        def observe(value: float) -> None:
            if not bound:
                bound.append(self._series(name, key))
            bound[0].observe(value)

        return observe

    def set(self, name: str, value: float, **labels: str) -> None:
        self._gauges.setdefault(name, {})[self._key(labels)] = value

    def observe(self, name: str, value: float, **labels: str) -> None:
        self._series(name, self._key(labels)).observe(value)

    def _series(self, name: str, key: LabelKey) -> _Histogram | _Summary:
        """The histogram (``name`` has buckets) or summary series ``key`` of ``name``, made at its first use."""
        bounds = self._buckets_for(name)
        table: dict[str, Any] = self._summaries if bounds is None else self._histograms
        series = table.setdefault(name, {})
        metric = series.get(key)
        if metric is None:  # NOTE: built once per series, not on every observation (several per request)
            metric = series[key] = _Summary() if bounds is None else _Histogram(bounds)
        return metric

    def value(self, name: str, **labels: str) -> float:
        """A counter's or gauge's current value (0 when never touched); for tests and /health probes."""
        key = self._key(labels)
        return self._counters.get(name, {}).get(key, self._gauges.get(name, {}).get(key, 0.0))

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        parts: list[str] = []
        for name in sorted(self._counters):
            parts.append(_render_simple(name, "counter", self._counters[name]))
        for name in sorted(self._gauges):
            parts.append(_render_simple(name, "gauge", self._gauges[name]))
        for name in sorted(self._histograms):
            parts.append(_render_histogram(name, self._histograms[name]))
        for name in sorted(self._summaries):
            parts.append(_render_summary(name, self._summaries[name]))
        return "\n".join(parts)

    def _key(self, labels: dict[str, str]) -> LabelKey:
        return _key({**self._labels, **labels} if self._labels else labels)

    def _buckets_for(self, name: str) -> list[float] | None:
        if name in self._bucket_rules:
            return self._bucket_rules[name]
        if name.endswith("duration"):
            return _DURATION_BUCKETS
        return None


def _key(labels: dict[str, str]) -> LabelKey:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


def _fmt_labels(key: LabelKey, extra: tuple[str, str] | None = None) -> str:
    pairs = list(key) + ([extra] if extra else [])
    if not pairs:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _render_simple(name: str, kind: str, series: dict[LabelKey, float]) -> str:
    lines = [f"# TYPE {name} {kind}"]
    lines += [f"{name}{_fmt_labels(key)} {_num(v)}" for key, v in sorted(series.items())]
    return "\n".join(lines) + "\n"


def _render_histogram(name: str, series: dict[LabelKey, _Histogram]) -> str:
    lines = [f"# TYPE {name} histogram"]
    for key, hist in sorted(series.items(), key=lambda kv: kv[0]):
        running = 0
        for bound, count in zip(hist.bounds, hist.counts):
            running += count
            lines.append(f"{name}_bucket{_fmt_labels(key, ('le', _num(bound)))} {running}")
        lines.append(f"{name}_bucket{_fmt_labels(key, ('le', '+Inf'))} {hist.n}")
        lines.append(f"{name}_sum{_fmt_labels(key)} {_num(hist.total)}")
        lines.append(f"{name}_count{_fmt_labels(key)} {hist.n}")
    return "\n".join(lines) + "\n"


def _render_summary(name: str, series: dict[LabelKey, _Summary]) -> str:
    lines = [f"# TYPE {name} summary"]
    for key, summ in sorted(series.items(), key=lambda kv: kv[0]):
        for q in SUMMARY_QUANTILES:
            lines.append(f"{name}{_fmt_labels(key, ('quantile', _num(q)))} {_num(summ.quantile(q))}")
        lines.append(f"{name}_sum{_fmt_labels(key)} {_num(summ.total)}")
        lines.append(f"{name}_count{_fmt_labels(key)} {summ.n}")
    return "\n".join(lines) + "\n"
