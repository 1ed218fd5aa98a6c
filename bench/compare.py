"""Run several configurations over one workload and one QPS sweep, in the simulator or against live servers,
and collect one result row per (configuration, offered load).

A row holds ``config`` ("scheduler+policy"), ``qps``, ``mode``, ``requests`` and the metrics of
:func:`bench.metrics.summarize` (``ttft_p50``, ``ttft_p99`` in seconds, ``hit_rate`` in [0, 1], ...). With KV
tiers a simulated row adds ``hit_rate_by_tier`` (over all requests, like ``hit_rate_all``) and
:func:`tier_metrics`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from bench import configs
from bench.cost_model import CostModel
from bench.loadgen import Endpoint, LoadRequest, run_load
from bench.metrics import RequestRecord, measured, record_hit_rate, summarize
from bench.server import LaunchSpec, LiveServer
from bench.simulator import SimConfig, Simulator, sched_requests
from bench.workloads import WorkloadRequest, WorkloadSpec, build, timed
from bench.workloads.prompts import PromptBuilder, load_tokenizer
from bench.workloads.request import offered_qps
from prism_cache.tiers import TIER_NAMES, Tier, TierConfig
from router_py.scheduling.interface import Scheduler

Row = dict[str, object]
# (config, num_blocks, block_size) -> scheduler; called with a 4th argument, the TierConfig, when tiers are on
SchedulerFactory = Callable[..., Scheduler]


@dataclass(frozen=True)
class SimSetup:
    cost: CostModel
    block_size: int = 16
    sim: SimConfig = SimConfig()
    kv_capacity_tokens: int | None = None  # None: the cost model's (from GPU memory)
    warmup: float = 0.1  # fraction of the first arrivals left out of the metrics (cold cache)
    tiers: TierConfig | None = None  # host/disk KV tiers (their timing is ``sim.tiers``)

    @property
    def num_blocks(self) -> int:
        return (self.kv_capacity_tokens or self.cost.kv_capacity_tokens) // self.block_size


def _default_factory(
    config: str, num_blocks: int, block_size: int, tiers: TierConfig | None = None
) -> Scheduler:
    return configs.make(config, num_blocks, block_size, tiers=tiers)


def simulate_point(
    config: str,
    requests: Sequence[WorkloadRequest],
    setup: SimSetup,
    factory: SchedulerFactory = _default_factory,
) -> Row:
    """One configuration at one offered load (the requests' arrivals) in the simulator."""
    tiers = setup.tiers if setup.tiers is not None and setup.tiers.enabled else None
    if tiers is None:
        scheduler = factory(config, setup.num_blocks, setup.block_size)
    else:
        scheduler = factory(config, setup.num_blocks, setup.block_size, tiers)
    sim_config = replace(setup.sim, block_size=setup.block_size)
    if setup.kv_capacity_tokens and sim_config.max_batch_total_tokens is None:
        sim_config = replace(sim_config, max_batch_total_tokens=setup.kv_capacity_tokens)
    sim = Simulator(scheduler, setup.cost, sim_config)
    result = sim.run(sched_requests(requests))
    row: Row = {"config": config, "qps": round(offered_qps(requests), 3), "mode": "sim"}
    kept = measured(result.records, setup.warmup)
    row.update(_summary(result.records, kept, record_hit_rate(kept)))
    row.update(forwards=result.forwards, hit_rate_all=result.hit_rate)
    if tiers is not None:
        queried = max(1, result.cache_stats.get("prompt_tokens_queried", 0))
        row["hit_rate_by_tier"] = {
            name: result.cache_stats.get(f"tier_hit_tokens_{name}", 0) / queried
            for name in (TIER_NAMES[t] for t in Tier)
        }
        row.update(tier_metrics(scheduler, sim))
    return row


def tier_metrics(scheduler: Scheduler, sim: Simulator) -> Row:
    """Blocks moved per direction, prefetches (planned, later promoted, landed late) and load seconds."""
    allocator = getattr(scheduler, "allocator", None)
    counters = allocator.tiers.counters if allocator is not None and allocator.tiers is not None else None
    if counters is None:
        return {}
    row: Row = {
        "tier_moved_blocks": {
            f"{TIER_NAMES[s]}->{TIER_NAMES[d]}": n for (s, d), n in sorted(counters.moved.items()) if n
        },
        "prefetched_blocks": counters.prefetched,
        "prefetch_hits": counters.prefetch_used,
    }
    if sim.tier_clock is not None:
        row.update(late_prefetches=sim.tier_clock.late_prefetches, tier_load_s=sim.tier_clock.load_seconds)
    return row


def _summary(records: Sequence[RequestRecord], kept: Sequence[RequestRecord], hit_rate: float) -> Row:
    """Metrics of the ``kept`` (post-warm-up) records; ``requests`` counts all records, ``measured_requests``
    the kept ones."""
    row: Row = dict(summarize(kept, hit_rate))
    row.update(requests=len(records), measured_requests=len(kept))
    return row


def compare_sim(
    spec: WorkloadSpec,
    qps_points: Sequence[float | None],
    config_names: Sequence[str],
    setup: SimSetup,
    factory: SchedulerFactory = _default_factory,
    progress: Callable[[Row], None] | None = None,
) -> list[Row]:
    """Every configuration at every load over the same requests; ``None`` as a load keeps a trace's times."""
    base = build(spec)
    rows = []
    for qps in qps_points:
        requests = timed(spec, base, qps)
        for config in config_names:
            row = simulate_point(config, requests, setup, factory)
            if qps is not None:
                row["qps"] = qps
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows


# ---- live ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveSetup:
    launch: LaunchSpec
    api: str = "generate_stream"  # or completions
    url: str | None = None  # an already running server: no launch, one config only (whatever it runs)
    warmup: float = 0.1  # TTFT leaves out the first arrivals; the /metrics hit rate covers the whole run


def live_requests(requests: Sequence[WorkloadRequest], builder: PromptBuilder) -> list[LoadRequest]:
    return [LoadRequest(r.arrival, builder.prompt(r), r.output_len, r.prompt_len) for r in requests]


def live_point(config: str, requests: Sequence[LoadRequest], setup: LiveSetup, qps: float) -> Row:
    """One configuration at one load against a fresh server (a cold cache for every point)."""
    sched, _, policy = configs.canonical(config).partition("+")
    desc = f"{config} @ {qps:g} qps"
    if setup.url is not None:
        result = asyncio.run(run_load(Endpoint(setup.url, setup.api), requests, desc))
    else:
        with LiveServer(setup.launch, sched, policy) as url:
            result = asyncio.run(run_load(Endpoint(url, setup.api), requests, desc))
    row: Row = {"config": config, "qps": qps, "mode": "live"}
    row.update(_summary(result.records, measured(result.records, setup.warmup), result.hit_rate))
    return row


def compare_live(
    spec: WorkloadSpec,
    qps_points: Sequence[float | None],
    config_names: Sequence[str],
    setup: LiveSetup,
    progress: Callable[[Row], None] | None = None,
) -> list[Row]:
    """Every configuration at every load against live servers, prompts built for the served tokenizer."""
    builder = PromptBuilder(load_tokenizer(setup.launch.model_id))
    base = build(spec)
    rows = []
    for qps in qps_points:
        timed_reqs = timed(spec, base, qps)
        load = live_requests(timed_reqs, builder)
        for config in config_names:
            rate = qps if qps is not None else round(offered_qps(timed_reqs), 3)
            row = live_point(config, load, setup, rate)
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows
