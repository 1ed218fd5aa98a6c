"""``prism-bench sweep``: robustness of the default knob set. Each workload generator's parameters are varied
one at a time around its defaults (Zipf exponent, corpus size, segment lengths, top-k, session and agent
shapes), each point replayed (:mod:`bench.replay_workload`: real scheduler and allocator; zipf-rag with no
clock and ``--window`` waiting, conversation and agent on a virtual clock at ``--utilization``) at cache
capacities from 0.25x to 4x the working set, for qas+dart and the baselines.
Prints one JSON row per (point, capacity, config) and a summary: where qas+dart wins, ties (within 0.5
points) or loses against the best baseline.

    python -m bench.sweep --out sweep.json --plot docs/sweep_issue14.png
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace

from bench.replay_workload import replay_point, replay_requests, working_set_tokens
from bench.workloads import WorkloadSpec, build
from bench.workloads.agent import AgentParams
from bench.workloads.conversation import ConversationParams
from bench.workloads.zipf_rag import ZipfRagParams

PRISM = "qas+dart"
BASELINES = ("fcfs+lru", "lpm+lru", "lpm+hotprefix", "fcfs+lookahead-lru")
CAPACITIES = (0.25, 0.5, 1.0, 2.0, 4.0)
TIE = 0.005  # within half a point of hit rate

ZIPF = ZipfRagParams(requests=600)
CONV = ConversationParams(sessions=160)
AGENT = AgentParams(tasks=40)
VARIATIONS: dict[str, dict[str, Sequence[object]]] = {
    "zipf-rag": {
        "alpha": (0.8, 1.4), "corpus": (500, 8000), "passage_len": (80, 320), "top_k": (3, 15),
        "system_len": (128, 2048),
    },
    "conversation": {
        "continue_first": (0.1, 0.6), "gap_median_s": (5.0, 120.0), "user_len": ((16, 64), (256, 1024)),
        "system_prompts": (1, 32),
    },
    "agent": {"branch": (0.0, 0.4), "tool_len": ((32, 256), (512, 4096)), "mean_steps": (3.0, 20.0)},
}


def points() -> Iterator[tuple[str, WorkloadSpec]]:
    """(label, spec): each generator at its defaults, then one parameter changed at a time."""
    defaults = {"zipf-rag": ("zipf", ZIPF), "conversation": ("conversation", CONV), "agent": ("agent", AGENT)}
    for name, (field, base) in defaults.items():
        yield f"{name}", WorkloadSpec(name, **{field: base})
        for key, values in VARIATIONS[name].items():
            for v in values:
                yield f"{name} {key}={v}", WorkloadSpec(name, **{field: replace(base, **{key: v})})


def sweep(
    window: int, configs: Sequence[str], utilization: float, params: dict[str, float] | None = None
) -> Iterator[dict[str, object]]:
    """Timed workloads (conversation, agent) replay on a virtual clock at ``utilization``; zipf-rag with no
    clock (every request waiting from the start, ``window`` visible)."""
    for label, spec in points():
        requests = replay_requests(build(spec))
        working = working_set_tokens(requests, 16)
        load = utilization if spec.self_timed else None
        for x in CAPACITIES:
            for config in configs:
                capacity = max(16, int(x * working))
                row = replay_point(
                    requests, config, capacity, window, params=params, bound=False, utilization=load
                )
                yield {"point": label, "capacity_x": x, "config": config, "hit_rate": row["hit_rate"]}


def summarize(rows: Sequence[dict[str, object]]) -> dict[str, object]:
    """Per (point, capacity): qas+dart minus the best baseline, in points; counts of wins, ties, losses."""
    by: dict[tuple[object, object], dict[object, float]] = {}
    for r in rows:
        hits = by.setdefault((r["point"], r["capacity_x"]), {})
        hits[r["config"]] = float(r["hit_rate"])  # type: ignore[arg-type]
    deltas = []
    for (point, x), hits in by.items():
        best = max(hits[c] for c in BASELINES if c in hits)
        deltas.append((point, x, 100 * (hits[PRISM] - best)))
    return {
        "wins": sum(d > 100 * TIE for _, _, d in deltas),
        "ties": sum(abs(d) <= 100 * TIE for _, _, d in deltas),
        "losses": sum(d < -100 * TIE for _, _, d in deltas),
        "mean_delta_points": sum(d for _, _, d in deltas) / max(1, len(deltas)),
        "worst": min(deltas, key=lambda t: t[2]) if deltas else None,
        "deltas": deltas,
    }


def plot(summary: dict[str, object], path: str) -> None:
    """qas+dart minus the best baseline at every point, one line per capacity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    deltas = summary["deltas"]
    assert isinstance(deltas, list)
    labels = list(dict.fromkeys(p for p, _, _ in deltas))
    fig, ax = plt.subplots(figsize=(12, 4.5))
    for x in CAPACITIES:
        ys = {p: d for p, c, d in deltas if c == x}
        ax.plot(range(len(labels)), [ys[p] for p in labels], marker="o", label=f"{x:g}x working set")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axhline(-0.5, color="red", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("qas+dart - best baseline (hit-rate points)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prism-bench sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--window", type=int, default=32, help="waiting requests the scheduler can see")
    parser.add_argument("--utilization", type=float, default=0.8, help="load of the timed workloads' clock")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="scheduler param")
    parser.add_argument("--out", default=None, help="write the rows and the summary as JSON")
    parser.add_argument("--plot", default=None, help="write the plot (PNG)")
    args = parser.parse_args(argv)
    rows = []
    params = {k: float(v) for k, _, v in (p.partition("=") for p in args.param)}
    for row in sweep(args.window, (PRISM, *BASELINES), args.utilization, params):
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = summarize(rows)
    print(json.dumps({k: v for k, v in summary.items() if k != "deltas"}))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            meta = {"window": args.window, "utilization": args.utilization}
            json.dump({**meta, "rows": rows, "summary": summary}, f, indent=1)
    if args.plot:
        plot(summary, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
