"""PNG plots of a comparison: TTFT percentiles versus QPS per configuration, and hit rate per
configuration."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # NOTE: files only, no display
import matplotlib.pyplot as plt  # noqa: E402

Row = dict[str, object]
PERCENTILES = ("ttft_p50", "ttft_p90", "ttft_p99")


def _series(rows: Sequence[Row], metric: str) -> dict[str, tuple[list[float], list[float]]]:
    out: dict[str, tuple[list[float], list[float]]] = {}
    for r in sorted(rows, key=lambda r: float(r["qps"])):  # type: ignore[arg-type]
        xs, ys = out.setdefault(str(r["config"]), ([], []))
        xs.append(float(r["qps"]))  # type: ignore[arg-type]
        ys.append(float(r[metric]))  # type: ignore[arg-type]
    return out


def ttft_plot(rows: Sequence[Row], path: Path, title: str) -> Path:
    fig, axes = plt.subplots(1, len(PERCENTILES), figsize=(5 * len(PERCENTILES), 4), sharex=True)
    for ax, metric in zip(axes, PERCENTILES):
        for config, (xs, ys) in _series(rows, metric).items():
            ax.plot(xs, ys, marker="o", label=config)
        ax.set_title(f"{title}: {metric.replace('ttft_', 'TTFT ').upper()}")
        ax.set_xlabel("offered load (QPS)")
        ax.set_ylabel("seconds")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def hit_rate_plot(rows: Sequence[Row], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for config, (xs, ys) in _series(rows, "hit_rate").items():
        ax.plot(xs, [100 * y for y in ys], marker="o", label=config)
    ax.set_title(f"{title}: exact-prefix hit rate")
    ax.set_xlabel("offered load (QPS)")
    ax.set_ylabel("% of prompt tokens")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(rows: Sequence[Row], out_dir: Path, title: str) -> list[Path]:
    return [
        ttft_plot(rows, out_dir / "ttft.png", title),
        hit_rate_plot(rows, out_dir / "hit_rate.png", title),
    ]
