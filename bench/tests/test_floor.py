"""bench.floor: the hit ceiling and the TTFT P99 floor hold for every policy the simulator runs."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from bench import compare
from bench.cost_model import ANALYTIC_NAMES, MeasuredCost, make_cost_model
from bench.floor import Work, compulsory, load_floor, main
from bench.workloads import WorkloadSpec, build, timed
from bench.workloads.request import WorkloadRequest
from bench.workloads.zipf_rag import ZipfRagParams


def _req(*segments: tuple[str, int], at: float = 0.0, out: int = 4) -> WorkloadRequest:
    return WorkloadRequest(at, tuple(segments), out)


def test_compulsory_counts_each_distinct_prefix_once_and_at_least_the_last_token() -> None:
    a = _req(("sys", 32), ("doc1", 16), ("q1", 8))
    b = _req(("sys", 32), ("doc1", 16), ("q2", 8))  # shares 48 tokens with a
    c = _req(("sys", 32), ("doc2", 16))  # shares the system prompt only
    works = compulsory([a, b, c, a])  # a again: its whole prompt is known, its last token is still computed
    assert [w.prefill for w in works] == [56, 8, 16, 1]
    assert works[1].pairs == sum(range(49, 57))  # positions 48..55 see 49..56 keys
    assert works[3].pairs == 56
    assert sum(w.prefill for w in compulsory([c, b, a, a])) == sum(w.prefill for w in works)  # order-free


@pytest.mark.parametrize("name", ANALYTIC_NAMES[:3])
def test_the_analytic_work_floor_is_below_any_split_into_steps(name: str) -> None:
    cost, rng = make_cost_model(name), random.Random(0)
    for _ in range(20):
        steps = [([(rng.randint(1, 4096), rng.randint(0, 8192))], [rng.randint(1, 4000) for _ in range(8)])
                 for _ in range(rng.randint(1, 6))]
        total = sum((Work(n, n * (ctx + (n + 1) / 2), len(d), sum(d)) for [(n, ctx)], d in steps), Work())
        spent = sum(cost.step_seconds(p, d) for p, d in steps)
        assert total.seconds(cost, len(steps)) <= spent * (1 + 1e-12)


def test_the_measured_work_floor_is_its_linear_form() -> None:
    m = MeasuredCost("m", 0.01, 1e-4, 1e-8, 1e-4, 1e-7, kv_capacity_tokens=10_000)
    steps = [([(100, 50)], [300, 400]), ([(7, 0), (20, 10)], [])]
    total = Work(127, 100 * 100.5 + 7 * 4 + 20 * 20.5, 2, 700)
    assert total.seconds(m, 2) == pytest.approx(sum(m.step_seconds(p, d) for p, d in steps))


def test_no_policy_beats_the_floors_in_the_simulator() -> None:
    """An overloaded zipf-rag point with a small cache: every configuration's hit rate is at most the
    ceiling and its P99 at least the floor; the floor is not vacuous there."""
    spec = WorkloadSpec("zipf-rag", requests=240, zipf=replace(ZipfRagParams(), corpus=200, top_k=4))
    cost = make_cost_model("qwen3-4b-a800")
    setup = compare.SimSetup(cost, kv_capacity_tokens=60_000)
    requests = timed(spec, build(spec), 60.0)
    f = load_floor(requests, cost, setup.warmup, kv_capacity_tokens=60_000)
    assert f.ttft_p99_floor > 0.5 and 0.2 < f.hit_ceiling < 1
    strict = load_floor(requests, cost, setup.warmup, kv_capacity_tokens=60_000, warmup_served=False)
    assert strict.ttft_p99_floor < f.ttft_p99_floor and strict.hit_ceiling == f.hit_ceiling
    for config in ("fcfs+lru", "lpm+lru", "qas+dart", "lpm+hotprefix"):
        row = compare.simulate_point(config, requests, setup)
        assert row["hit_rate"] <= f.hit_ceiling + 1e-9, config
        assert row["ttft_p99"] >= f.ttft_p99_floor, config


def test_the_command_prints_a_row_per_load(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--workload", "zipf-rag", "--requests", "60", "--qps", "5,50"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| 5")]
    assert len(lines) == 2
