from __future__ import annotations

import json
import math

import pytest

from bench import report
from bench.cli import main
from bench.configs import canonical, parse_configs


def _rows() -> list[dict]:
    rows = []
    for qps, (f, l, p) in {10.0: (1.0, 0.8, 0.6), 20.0: (3.0, 2.0, 1.0)}.items():
        for config, p99, hit in (("fcfs+lru", f, 0.30), ("lpm+lru", l, 0.40), ("qas+dart", p, 0.50),
                                 ("qas+lru", p / 2, 0.6)):
            rows.append({"config": config, "qps": qps, "ttft_p99": p99, "hit_rate": hit, "ttft_p50": p99 / 2})
    return rows


def test_headline_is_against_the_strongest_baseline() -> None:
    h = report.headline(_rows())
    assert h is not None and h["strongest_baseline"] == "lpm+lru"  # qas+lru is an ablation, not a baseline
    assert h["p99_change_pct"] == pytest.approx(100 * (0.8 / 1.4 - 1))
    assert h["hit_rate_delta_points"] == pytest.approx(10.0)


def test_tables_show_ratios_to_both_baselines() -> None:
    text = report.render(_rows())
    assert "0.6 (0.60xF, 0.75xL)" in text and "-42.9%" in text and "+10.0 points" in text


def test_config_names() -> None:
    assert parse_configs("fcfs+lru, qas+dart,hotprefix,lookahead-lru") == [
        "fcfs+lru", "qas+dart", "lpm+hotprefix", "fcfs+lookahead-lru"]
    with pytest.raises(ValueError):
        canonical("qas")


def test_compare_sim_writes_results_plots_and_table(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    rc = main(["compare", "--mode", "sim", "--workload", "zipf-rag", "--cost-model", "llama2-13b-a800",
               "--qps", "2,4", "--configs", "fcfs+lru", "--requests", "60", "--corpus", "50",
               "--out", str(out)])
    assert rc == 0
    rows = json.loads((out / "results.json").read_text())
    assert [(r["config"], r["qps"]) for r in rows] == [("fcfs+lru", 2.0), ("fcfs+lru", 4.0)]
    for r in rows:
        assert {"config", "qps", "ttft_p50", "ttft_p99", "hit_rate", "requests"} <= r.keys()
        assert r["requests"] == 60 and 0 < r["ttft_p50"] <= r["ttft_p99"] and 0 <= r["hit_rate"] < 1
    assert (out / "ttft.png").stat().st_size > 1000 and (out / "hit_rate.png").stat().st_size > 1000
    assert "TTFT P99 (s)" in capsys.readouterr().out


def test_compare_replays_a_trace_at_its_own_times(tmp_path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(
        json.dumps({"timestamp": 0.5 * i, "segments": [["sys", 600], [f"u{i}", 50]], "output_length": 4})
        + "\n"
        for i in range(20)))
    out = tmp_path / "out"
    assert main(["compare", "--workload", f"trace:{trace}", "--time-scale", "2", "--configs", "fcfs+lru",
                 "--out", str(out)]) == 0
    (row,) = json.loads((out / "results.json").read_text())
    assert row["qps"] == pytest.approx(1.0) and row["requests"] == 20
    assert row["hit_rate"] > 0.5 and not math.isnan(row["ttft_p99"])


def test_replay_and_router_overhead_are_wired_lazily(monkeypatch) -> None:
    import argparse
    import sys
    import types

    import bench

    calls: list[object] = []
    replay = types.ModuleType("bench.replay")
    replay.add_arguments = lambda p: p.add_argument("trace")  # type: ignore[attr-defined]
    replay.run = lambda args: calls.append(args) or 3  # type: ignore[attr-defined]
    overhead = types.ModuleType("bench.router_overhead")
    overhead.main = lambda argv: calls.append(argv) or 4  # type: ignore[attr-defined]
    for name, module in (("replay", replay), ("router_overhead", overhead)):
        monkeypatch.setitem(sys.modules, f"bench.{name}", module)
        monkeypatch.setattr(bench, name, module, raising=False)
    assert main(["replay", "t.jsonl"]) == 3
    assert main(["router-overhead", "--requests", "5"]) == 4
    assert calls == [argparse.Namespace(trace="t.jsonl"), ["--requests", "5"]]


def test_compare_help_names_every_cost_model(capsys) -> None:
    from bench.cost_model import ANALYTIC_NAMES

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    for name in (*ANALYTIC_NAMES, "measured:PATH"):
        assert name in text
