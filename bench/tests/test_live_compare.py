"""``compare --mode live`` end to end against a stand-in launcher: a server per (configuration, load) is
started on a free port, waited for, loaded with prompts built for the model folder's tokenizer, and
stopped."""

from __future__ import annotations

import json
import sys

from bench.cli import main
from bench.tests.test_workloads import _train_tokenizer


def test_live_compare_launches_loads_and_stops_a_server_per_point(tmp_path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    _train_tokenizer("bytelevel").save(str(model / "tokenizer.json"))
    out = tmp_path / "out"
    rc = main([
        "compare", "--mode", "live", "--model-id", str(model),
        "--launcher", f"{sys.executable} -m bench.tests.fake_launcher",
        "--workload", "zipf-rag", "--qps", "20,40", "--configs", "fcfs+lru,qas+dart", "--requests", "30",
        "--corpus", "10", "--system-len", "40", "--passage-len", "20", "--question-len", "8",
        "--output-len", "2,4",
        "--out", str(out),
    ])
    assert rc == 0
    rows = json.loads((out / "results.json").read_text())
    assert [(r["config"], r["qps"]) for r in rows] == [
        ("fcfs+lru", 20.0), ("qas+dart", 20.0), ("fcfs+lru", 40.0), ("qas+dart", 40.0)]
    for r in rows:
        assert r["mode"] == "live" and r["requests"] == 30 and r["errors"] == 0
        assert 0.2 < r["hit_rate"] < 1 and r["ttft_p50"] > 0
    logs = sorted(p.name for p in out.glob("server-*.log"))
    assert len(logs) == 4 and logs[0].startswith("server-fcfs+lru-")
