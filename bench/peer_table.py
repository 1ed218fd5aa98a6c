"""The comparison table with a peer server: one line per measurement, each server's value and the ratio
ours / theirs, with the issue's targets where it states one.

A measurement row (as written by :mod:`bench.peer_run`, one list per server) is a dict with ``key`` (stable
id), ``label``, ``unit`` (``ms``, ``%``, ``tok/s`` or ``count``), ``value`` (float; NaN when not measured or
not reported), ``better`` (``lower`` or ``higher``) and ``target`` (the ratio to reach, or None).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Row = dict[str, object]


def ratio(ours: float, theirs: float) -> float:
    """ours / theirs; NaN when either is NaN or theirs is 0."""
    if math.isnan(ours) or math.isnan(theirs) or theirs == 0:
        return math.nan
    return ours / theirs


def target_met(r: float, better: str, target: float | None) -> bool | None:
    """Whether ratio ``r`` reaches ``target`` (<= for lower-is-better, >= for higher); None without a target
    or a ratio."""
    if target is None or math.isnan(r):
        return None
    return r <= target if better == "lower" else r >= target


def fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "n/a"
    if unit == "%":
        return f"{100 * value:.1f}%"
    if unit == "count":
        return f"{value:.0f}"
    return f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"


def _value(row: Row | None) -> float:
    v = None if row is None else row.get("value")
    return float(v) if isinstance(v, (int, float)) else math.nan


def _target_cell(r: float, row: Row) -> str:
    target = row.get("target")
    if not isinstance(target, (int, float)):
        return ""
    sign = "<=" if row["better"] == "lower" else ">="
    met = target_met(r, str(row["better"]), float(target))
    return f"{sign} {target:g}x: " + ("n/a" if met is None else "met" if met else "not met")


def render(
    ours: Sequence[Row], theirs: Sequence[Row], ours_name: str = "prism", theirs_name: str = "vLLM"
) -> str:
    """A Markdown table over the union of both servers' measurements (ours' order first).

    Args:
        ours, theirs: measurement rows of each server (see the module docstring).
    Returns:
        The table; the ratio column is ours / theirs ("lower" rows: below 1 is ours faster).
    """
    by_key = {str(r["key"]): r for r in theirs}
    keys = list(dict.fromkeys([*(str(r["key"]) for r in ours), *by_key]))
    mine = {str(r["key"]): r for r in ours}
    ratio_head = f"ratio {ours_name} / {theirs_name}"
    lines = [
        f"| measurement | {ours_name} | {theirs_name} | {ratio_head} | better | target |",
        "|---|---|---|---|---|---|",
    ]
    for key in keys:
        row = mine.get(key) or by_key[key]
        a, b = _value(mine.get(key)), _value(by_key.get(key))
        unit, r = str(row["unit"]), ratio(a, b)
        shown = "n/a" if math.isnan(r) else f"{r:.2f}x"
        lines.append(f"| {row['label']} | {fmt(a, unit)} | {fmt(b, unit)} | {shown} | {row['better']} | "
                     f"{_target_cell(r, row)} |")
    return "\n".join(lines)
