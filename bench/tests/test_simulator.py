from __future__ import annotations

import pytest

from bench import configs
from bench.compare import SimSetup, compare_sim
from bench.cost_model import make_cost_model
from bench.simulator import SimConfig, Simulator, sched_requests
from bench.workloads import WorkloadSpec
from bench.workloads.request import WorkloadRequest
from bench.workloads.zipf_rag import ZipfRagParams

COST = make_cost_model("qwen3-4b-a800")
SPEC = WorkloadSpec("zipf-rag", requests=300, zipf=ZipfRagParams(corpus=60, system_len=256, passage_len=128))


def _rows(qps: list[float], seed: int = 0) -> list[dict]:
    spec = WorkloadSpec(SPEC.name, SPEC.requests, seed, zipf=SPEC.zipf)
    return compare_sim(spec, qps, ["fcfs+lru"], SimSetup(COST), configs.make)


def test_deterministic_for_a_seed() -> None:
    assert _rows([20.0], seed=5) == _rows([20.0], seed=5)
    assert _rows([20.0], seed=5) != _rows([20.0], seed=6)


def test_fcfs_ttft_grows_with_qps() -> None:
    low, mid, high = _rows([5.0, 40.0, 120.0])
    assert low["ttft_p50"] < mid["ttft_p50"] < high["ttft_p50"]
    assert low["ttft_p99"] < high["ttft_p99"]
    assert all(r["requests"] == 300 and r["errors"] == 0 for r in (low, mid, high))


def _serve_pair(shared: bool) -> list[float]:
    """Two requests far apart in time; the second repeats the first's prompt when ``shared``."""
    first = WorkloadRequest(0.0, (("sys", 2048), ("q0", 32)), 4)
    second = WorkloadRequest(10.0, (("sys" if shared else "other", 2048), ("q1", 32)), 4)
    result = Simulator(configs.make("fcfs+lru", 10_000, 16), COST).run(sched_requests([first, second]))
    assert result.hit_rate > 0 if shared else result.hit_rate == 0
    return [r.ttft for r in sorted(result.records, key=lambda r: r.arrival)]


def test_cache_hits_reduce_prefill_time() -> None:
    cold, warm = _serve_pair(shared=True)
    _, unshared = _serve_pair(shared=False)
    assert warm < 0.3 * cold
    assert unshared > 0.9 * cold


def test_chunked_prefill_respects_the_budget_and_finishes_everything() -> None:
    plans = []
    reqs = [WorkloadRequest(0.01 * i, ((f"p{i}", 3000),), 3) for i in range(6)]
    sim = Simulator(configs.make("fcfs+lru", 10_000, 16), COST, SimConfig(max_batch_prefill_tokens=2048), on_plan=plans.append)
    result = sim.run(sched_requests(reqs))
    assert len(result.records) == 6 and all(r.output_tokens == 3 for r in result.records)
    assert all(p.prefill_tokens <= 2048 for p in plans)
    assert any(a.chunk_len is not None for p in plans for a in p.admissions)


def test_hit_rate_of_records_equals_the_schedulers_counters() -> None:
    from bench import configs

    setup = SimSetup(COST, kv_capacity_tokens=20_000, warmup=0.0)
    spec = WorkloadSpec(SPEC.name, 200, 0, zipf=SPEC.zipf)
    (row,) = compare_sim(spec, [30.0], ["fcfs+lru"], setup, lambda c, n, b: configs.make(c, n, b))
    assert 0.1 < row["hit_rate"] == pytest.approx(row["hit_rate_all"])
    assert row["measured_requests"] == row["requests"] == 200


@pytest.mark.parametrize("publish", [False, True])
def test_prefill_done_publishes_a_prompt_before_its_request_finishes(publish: bool) -> None:
    from bench import configs

    first = WorkloadRequest(0.0, (("sys", 2048), ("q0", 32)), 200)  # still decoding when the second arrives
    second = WorkloadRequest(0.5, (("sys", 2048), ("q1", 32)), 4)
    sim = Simulator(configs.make("fcfs+lru", 1000, 16), COST, SimConfig(prefill_done=publish))
    result = sim.run(sched_requests([first, second]))
    assert (result.hit_rate > 0.4) == publish
