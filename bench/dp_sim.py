"""Data parallelism in the simulator: N replicas, each the single-replica simulator (:mod:`bench.simulator`:
the router's real scheduler and tree, a cost model's clock), behind one replica router (:mod:`bench.dp_routers`).

Requests are taken in arrival order; before each is routed every replica runs up to its arrival (a forward that
starts before it runs to its end), so the router sees each replica's first tokens and finishes as of then,
and the trees as they are. The whole run's records are pooled for the metrics.

The knee: the load at which round-robin's P99 TTFT has doubled from its value at the lowest load swept (the
first swept load where it is at least twice that); the issue's comparison is made there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

from bench.compare import SchedulerFactory, SimSetup, _default_factory
from bench.dp_losses import FIELDS as LOSS_FIELDS
from bench.dp_losses import LossProbe
from bench.dp_routers import RouteRequest, make_router
from bench.metrics import measured, record_hit_rate, summarize
from bench.simulator import Simulator
from bench.workloads.request import WorkloadRequest
from bench.workloads.token_ids import prompt_token_ids
from prism_cache import block_hashes
from router_py.scheduling.interface import SchedRequest
from router_py.scheduling.replica_choice import ReplicaChoiceParams

Row = dict[str, object]


def simulate_dp(
    router_name: str,
    requests: Sequence[WorkloadRequest],
    setup: SimSetup,
    replicas: int,
    config: str = "qas+dart",
    factory: SchedulerFactory = _default_factory,
    prism: ReplicaChoiceParams = ReplicaChoiceParams(),
    losses: bool = False,
) -> Row:
    """One router at one offered load (the requests' arrivals) over ``replicas`` simulated replicas, each
    running scheduler ``config``. Hit rate and TTFT are over the records after the warm-up fraction;
    ``losses`` adds :mod:`bench.dp_losses`'s rates over the same requests."""
    schedulers = [factory(config, setup.num_blocks, setup.block_size) for _ in range(replicas)]
    peeks = [s.peek_prefix for s in schedulers]
    capacity = [setup.num_blocks * setup.block_size] * replicas
    router = make_router(router_name, peeks, setup.block_size, prism, capacity)
    probe = LossProbe(peeks, setup.block_size) if losses else None
    sim_config = replace(setup.sim, block_size=setup.block_size)
    if setup.kv_capacity_tokens and sim_config.max_batch_total_tokens is None:
        sim_config = replace(sim_config, max_batch_total_tokens=setup.kv_capacity_tokens)
    sims = [
        Simulator(s, setup.cost, sim_config, on_first_token=router.first_token, on_finish=router.finished)
        for s in schedulers
    ]
    routed = [0] * replicas
    first_measured = int(len(requests) * setup.warmup)  # NOTE: as metrics.measured drops them, by arrival
    for i, w in enumerate(sorted(requests, key=lambda r: r.arrival)):
        prompt = tuple(prompt_token_ids(w))
        for sim in sims:
            sim.advance(w.arrival)
        hashes = block_hashes("", prompt, setup.block_size)
        if probe is not None:
            probe.before(hashes)
        replica = router.choose(RouteRequest(i, prompt, hashes, w.output_len, w.segments[0][0], w.arrival))
        if probe is not None:
            probe.after(hashes, len(prompt), replica, i >= first_measured)
        sims[replica].submit(SchedRequest(i, prompt, w.output_len, w.arrival))
        routed[replica] += 1
    for sim in sims:
        sim.advance(math.inf)
    records = [rec for sim in sims for rec in sim.records]
    kept = measured(records, setup.warmup)
    row: Row = {"router": router_name, "replicas": replicas, "config": config}
    row.update(summarize(kept, record_hit_rate(kept)))
    row.update(measured_requests=len(kept), max_replica_share=max(routed) / max(1, sum(routed)))
    if probe is not None:
        row.update(probe.rates())
    return row


def sweep(
    routers: Sequence[str],
    timed: Callable[[float], list[WorkloadRequest]],
    qps_points: Sequence[float],
    setup: SimSetup,
    replicas: int,
    progress: Callable[[Row], None] | None = None,
    **kwargs: object,
) -> list[Row]:
    """Every router at every load; ``timed(qps)`` gives the workload's arrivals at that load."""
    rows = []
    for qps in qps_points:
        requests = timed(qps)
        for name in routers:
            row = simulate_dp(name, requests, setup, replicas, **kwargs)  # type: ignore[arg-type]
            row["qps"] = qps
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows


def _num(row: Row, key: str) -> float:
    return float(row[key])  # type: ignore[arg-type]


def knee(rows: Sequence[Row], baseline: str = "round-robin") -> float | None:
    """The lowest swept load where ``baseline``'s P99 TTFT is at least twice its P99 at the lowest load swept;
    None when no swept load reaches it."""
    base = sorted((r for r in rows if r["router"] == baseline), key=lambda r: _num(r, "qps"))
    for r in base[1:]:
        if _num(r, "ttft_p99") >= 2 * _num(base[0], "ttft_p99"):
            return _num(r, "qps")
    return None


def verdict(rows: Sequence[Row]) -> list[str]:
    """Lines stating the issue's target at the knee: prism's hit rate against sglang-approx's, and prism's P99
    TTFT over round-robin's (target: <= 0.8)."""
    at = knee(rows)
    if at is None:
        return ["knee: round-robin's P99 never doubled over the swept loads; sweep higher --qps"]
    point = {str(r["router"]): r for r in rows if r["qps"] == at}
    out = [f"knee: {at:g} req/s (round-robin P99 TTFT >= 2x its value at the lowest load)"]
    prism, rr, approx = point.get("prism"), point.get("round-robin"), point.get("sglang-approx")
    if prism is not None and approx is not None:
        ph, ah = _num(prism, "hit_rate"), _num(approx, "hit_rate")
        out.append(f"hit rate at knee: prism {100 * ph:.2f}% vs sglang-approx {100 * ah:.2f}% "
                   f"({'met' if ph >= ah else 'NOT met'}: >=)")
    if prism is not None and rr is not None:
        ratio = _num(prism, "ttft_p99") / _num(rr, "ttft_p99")
        out.append(f"P99 TTFT at knee: prism / round-robin = {ratio:.3f} "
                   f"({'met' if ratio <= 0.8 else 'NOT met'}: <= 0.8)")
    return out


def table(rows: Sequence[Row]) -> str:
    """One line per (load, router): P50/P99 TTFT, P99 over round-robin's at that load, hit rate, busiest share
    (and the loss rates of :mod:`bench.dp_losses` when every row has them)."""
    rr = {r["qps"]: _num(r, "ttft_p99") for r in rows if r["router"] == "round-robin"}
    losses = [name for name in LOSS_FIELDS if all(f"{name}_rate" in r for r in rows)]
    lines = [f"{'qps':>6} {'router':<15} {'p50 s':>8} {'p99 s':>8} {'p99/rr':>7} {'hit %':>7} {'busiest':>8}"
             + "".join(f" {name + ' %':>17}" for name in losses)]
    for r in rows:
        base, p99 = rr.get(r["qps"]), _num(r, "ttft_p99")
        ratio = f"{p99 / base:.3f}" if base else "-"
        lines.append(f"{r['qps']:>6} {r['router']:<15} {_num(r, 'ttft_p50'):>8.3f} {p99:>8.3f} {ratio:>7} "
                     f"{100 * _num(r, 'hit_rate'):>7.2f} {_num(r, 'max_replica_share'):>8.3f}"
                     + "".join(f" {100 * _num(r, name + '_rate'):>17.2f}" for name in losses))
    return "\n".join(lines)
