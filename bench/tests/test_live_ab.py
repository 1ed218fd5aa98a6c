"""bench.live_ab's round order and table (the live runs need two servers: see docs/performance.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import live_ab
from bench.loadgen import LoadRequest
from bench.metrics import RequestRecord


def test_servers_take_turns_going_first_and_the_table_prints_b_over_a(monkeypatch, capsys) -> None:
    order: list[str] = []

    def fake_run(url: str, pid: int, loads, load: str, qps: float, worst: int) -> tuple[float, ...]:
        order.append(url)
        return (10.0, 50.0, 12.0, 0.9, 4.0, 100.0) if url == "a" else (5.0, 40.0, 6.0, 0.9, 2.0, 150.0)

    monkeypatch.setattr(live_ab, "one_run", fake_run)
    monkeypatch.setattr(live_ab, "run_closed", lambda *a, **k: _done())
    monkeypatch.setattr(live_ab, "load_tokenizer", lambda model: None)
    monkeypatch.setattr(live_ab, "PromptBuilder", lambda tokenizer: None)
    monkeypatch.setattr(live_ab.PeerLoads, "warmup", lambda self: [])
    rows = live_ab.compare({"A": ("a", 1), "B": ("b", 2)}, "model", "shared", 8.0, 0, rounds=3)
    assert order == ["a", "b", "b", "a", "a", "b"]
    live_ab.report(rows)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "| B / A | 0.50 | 0.80 | 0.50 | 1.00 | 0.50 | 1.50 |"


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


def test_a_clients_point_runs_n_closed_loop_clients_over_2n_requests(monkeypatch) -> None:
    from bench.peer_loads import PeerParams

    class Result:
        records = [RequestRecord(0.0, 0.01, 0.1, 10, 8)]
        hit_rate = 0.0

    calls = []

    async def closed(endpoint, requests, clients, desc):
        calls.append((len(requests), clients, {r.max_new_tokens for r in requests}))
        return Result()

    monkeypatch.setattr(live_ab, "wait_quiet", lambda: 0.0)
    monkeypatch.setattr(live_ab, "router_cpu", lambda pid: 0.0)
    monkeypatch.setattr(live_ab, "run_closed", closed)
    monkeypatch.setattr(live_ab, "PeerLoads", lambda params, builder: _Loads(params))
    monkeypatch.setattr(live_ab, "load_tokenizer", lambda model: None)
    monkeypatch.setattr(live_ab, "PromptBuilder", lambda tokenizer: None)
    rows = live_ab.compare({"A": ("a", 1)}, "m", "clients", 4.0, 0, rounds=1,
                           params=PeerParams(client_prompt_len=1000, client_output=8))
    assert calls == [(0, 1, set()), (8, 4, {8})]  # the warm-up, then 8 requests of 8 tokens on 4 clients
    assert rows["A"][0][5] == 80.0  # 8 tokens over 0.1 s


class _Loads:
    def __init__(self, params) -> None:
        self.params, self.tag = params, ""

    def warmup(self) -> list:
        return []

    def clients(self) -> list[LoadRequest]:
        p = self.params
        return [LoadRequest(0.0, "x" * p.client_prompt_len, p.client_output, p.client_prompt_len)
                for _ in range(p.client_requests)]


def test_the_slowest_requests_name_their_opening_and_whether_they_were_its_first() -> None:
    a, b = "a" * live_ab.OPENING, "b" * live_ab.OPENING
    requests = [LoadRequest(0.2, b + " tail 2", 4, 10), LoadRequest(0.0, a + " tail 1", 4, 10),
                LoadRequest(0.1, a + " tail 3", 4, 10)]
    records = [RequestRecord(0.0, 0.030, 0.1, 10, 4), RequestRecord(0.1, 0.105, 0.2, 10, 4),
               RequestRecord(0.2, 0.260, 0.3, 10, 4)]
    lines = live_ab.slowest(requests, records, 2)
    assert lines == ["arrival   200.0 ms  TTFT   60.0 ms  opening 1 (its first request)",
                     "arrival     0.0 ms  TTFT   30.0 ms  opening 0 (its first request)"]
    assert live_ab.slowest(requests, records, 0) == []


def test_each_server_runs_its_own_trees_router(tmp_path: Path) -> None:
    """The launcher starts the router with ``python -m``, which puts the working folder first on the path: run
    from this checkout, a server of another tree served this checkout's router (PYTHONPATH alone lost)."""
    tree = tmp_path / "tree"
    (tree / "router_py").mkdir(parents=True)
    (tree / "router_py" / "__init__.py").write_text("")
    spec = live_ab._spec("model", str(tree), ["X=1"], tmp_path / "logs")
    probe = [sys.executable, "-c", "import router_py, os; print(router_py.__file__, os.environ['X'])"]

    def where(cwd: str | None) -> str:
        env = dict(os.environ, **dict(spec.env))
        return subprocess.run(probe, env=env, cwd=cwd, capture_output=True, text=True, check=True).stdout
    assert where(spec.cwd) == f"{tree / 'router_py' / '__init__.py'} 1\n"
    assert str(tree) not in where(str(Path(__file__).resolve().parents[2]))  # the checkout's own router_py
