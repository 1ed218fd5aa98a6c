"""bench.live_ab's round order and table (the live runs need two servers: see docs/performance.md)."""

from __future__ import annotations

import pytest

from bench import live_ab


def test_servers_take_turns_going_first_and_the_table_prints_b_over_a(monkeypatch, capsys) -> None:
    order: list[str] = []

    def fake_run(url: str, pid: int, loads, load: str, qps: float) -> tuple[float, ...]:
        order.append(url)
        return (10.0, 50.0, 12.0, 0.9, 4.0) if url == "a" else (5.0, 40.0, 6.0, 0.9, 2.0)

    monkeypatch.setattr(live_ab, "one_run", fake_run)
    monkeypatch.setattr(live_ab, "run_closed", lambda *a, **k: _done())
    monkeypatch.setattr(live_ab, "load_tokenizer", lambda model: None)
    monkeypatch.setattr(live_ab, "PromptBuilder", lambda tokenizer: None)
    monkeypatch.setattr(live_ab.PeerLoads, "warmup", lambda self: [])
    rows = live_ab.compare({"A": ("a", 1), "B": ("b", 2)}, "model", "shared", 8.0, 0, rounds=3)
    assert order == ["a", "b", "b", "a", "a", "b"]
    live_ab.report(rows)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "| B / A | 0.50 | 0.80 | 0.50 | 1.00 | 0.50 |"


async def _done() -> None:
    return None


def test_a_failed_request_fails_the_comparison(monkeypatch) -> None:
    class Result:
        records, hit_rate = [], 0.0

    monkeypatch.setattr(live_ab, "wait_quiet", lambda: 0.0)
    monkeypatch.setattr(live_ab, "router_cpu", lambda pid: 0.0)
    monkeypatch.setattr(live_ab, "run_load", lambda *a, **k: _result(Result()))
    monkeypatch.setattr(live_ab, "summarize", lambda records, hit: {"errors": 1})

    class Loads:
        def shared(self, qps: float) -> list:
            return []

    with pytest.raises(RuntimeError, match="1 requests failed"):
        live_ab.one_run("http://x", 1, Loads(), "shared", 8.0)


async def _result(r):
    return r
