"""bench.replay: the trace through the real scheduler and allocator, beside the Belady bound."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.replay import TraceRequest, load_mooncake, main

ROOT = Path(__file__).resolve().parents[2]


def _trace(tmp_path: Path) -> Path:
    rows: list[dict[str, object]] = []
    for turn in range(6):  # three sessions, each turn extends its session's prompt by one hash id
        for session in range(3):
            ids = [1000 * session + i for i in range(turn + 2)]
            rows.append(
                {
                    "timestamp": 100 * len(rows),
                    "input_length": 512 * len(ids) - 7,
                    "output_length": 4,
                    "hash_ids": ids,
                }
            )
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_tokens_and_units_follow_the_hash_ids() -> None:
    r = TraceRequest(0.0, (3, 5), 600, 1)
    tokens = r.tokens()
    assert len(tokens) == 600 and tokens[0] == 3 * 512 and tokens[512] == 5 * 512
    assert r.units(16) == [((3, 0), 32), ((5, 1), 5)]
    assert r.units(512) == [((3, 0), 1)]


@pytest.mark.parametrize(("scheduler", "policy"), [("fcfs", "lru"), ("qas", "dart"), ("lpm", "lru")])
def test_replay_reports_hit_rate_beside_belady(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], scheduler: str, policy: str
) -> None:
    path = _trace(tmp_path)
    args = [
        str(path),
        "--capacity-tokens",
        "8192",
        "--block-size",
        "64",
        "--scheduler",
        scheduler,
        "--cache-policy",
        policy,
        "--window",
        "4",
        "--json",
    ]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["requests"] == 18 and out["capacity_tokens"] == 8192
    assert 0 < out["hit_rate"] <= out["belady_hit_rate"] <= 1


def test_unlimited_capacity_hits_every_repeated_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _trace(tmp_path)
    assert (
        main(
            [
                str(path),
                "--capacity-tokens",
                "1000000",
                "--block-size",
                "512",
                "--scheduler",
                "fcfs",
                "--cache-policy",
                "lru",
                "--prefill-tokens",
                "1",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    rows = load_mooncake(str(path))
    # one request per batch; each turn reuses the full blocks of its session's previous turn (its last is partial)
    repeated = sum(512 * (len(r.hash_ids) - 2) for r in rows[3:])
    assert out["hit_tokens"] == repeated and out["hit_rate"] == out["belady_hit_rate"]


def test_module_entry_point(tmp_path: Path) -> None:
    path = _trace(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "bench.replay", str(path), "--capacity-tokens", "4096"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "hit rate" in done.stdout and "Belady" in done.stdout
