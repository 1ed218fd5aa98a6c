"""PCR-style RAG serving in the simulator: device-only prefix caching against KV tiers, with PCR's ablation of
layer-wise overlap and queue-based prefetch. ``python -m bench.tiers_pcr [--requests N] [--json]``.

Workload (PCR's, as described in its evaluation): prompts of two retrieved passages and a question, about 6.8k
tokens, passages drawn by Zipf popularity so that about 40% of prompt tokens are reusable with an unbounded
cache; 16 output tokens; Poisson arrivals at 0.5-1 req/s. Cost models: Llama-2-7B and -13B on an A6000 48 GB
(the device KV budget is what is left of 90% of its memory after the weights, as vLLM's default), host tier
128 GB of DRAM (PCR's testbed had 256 GB), disk tier 2 TB of NVMe (every passage fits), 25 GB/s PCIe and
3 GB/s NVMe reads. Prints mean TTFT per configuration and its ratio to device-only with the same scheduler
(fcfs+lookahead-lru, PCR's own pairing, against fcfs+lru: vLLM's device-only prefix cache), and the ceiling
of any tiering: ``unbounded-device``, a device cache that holds every block and loads nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from bench import compare
from bench.cost_model import AnalyticCost, make_cost_model
from bench.simulator import SimConfig
from bench.tier_timing import TierTiming
from bench.workloads import WorkloadSpec, build, timed
from bench.workloads.zipf_rag import ZipfRagParams
from prism_cache.tiers import TierConfig

BLOCK = 16
HOST_BYTES = 128e9
DISK_BYTES = 2e12
RAG = ZipfRagParams(
    requests=1000, system_prompts=1, corpus=800, alpha=0.8, top_k=2, system_len=16, passage_len=3392,
    question_len=32, output_len=(16, 16),
)
# the bound on any tiering: a device cache holding everything (its hits cost no loads); the token budget stays
CEILING = "unbounded-device"
# (label, scheduler+policy, tiers?, overlap, prefetch window)
VARIANTS = (
    ("device-only", "fcfs+lru", False, False, 0),
    ("device-only", "qas+dart", False, False, 0),
    ("tiers", "qas+dart", True, False, 0),
    ("tiers+prefetch", "qas+dart", True, False, 4),
    ("tiers+overlap", "qas+dart", True, True, 0),
    ("tiers+overlap+prefetch", "qas+dart", True, True, 4),
    ("tiers+overlap+prefetch", "fcfs+lookahead-lru", True, True, 4),
    (CEILING, "qas+dart", False, False, 0),
)


def reusable_share(spec: WorkloadSpec) -> float:
    """Prompt tokens an unbounded exact-prefix cache would serve (at most input - 1 per request)."""
    seen: set[tuple[str, ...]] = set()
    hit = total = 0
    for r in build(spec):
        key: tuple[str, ...] = ()
        pos = cached = 0
        for sid, n in r.segments:
            key += (sid,)
            if key in seen and cached == pos:
                cached += n
            seen.add(key)
            pos += n
        hit, total = hit + min(cached, pos - 1), total + pos
    return hit / total


def run_point(cost: AnalyticCost, qps: float, variant: tuple, requests: int) -> dict[str, object]:
    label, config, with_tiers, overlap, window = variant
    per_token = cost.model.kv_bytes_per_token
    tiers = TierConfig(int(HOST_BYTES // per_token) // BLOCK, int(DISK_BYTES // per_token) // BLOCK, "dart")
    if config.startswith("fcfs"):
        tiers = replace(tiers, policy="lru-offload")
    timing = TierTiming(per_token * BLOCK, cost.model.layers, overlap=overlap)
    sim = SimConfig(tiers=timing if with_tiers else None, prefetch_window=window)
    capacity = None
    if label == CEILING:
        sim, capacity = replace(sim, max_batch_total_tokens=cost.kv_capacity_tokens), 10_000_000
    setup = compare.SimSetup(cost, BLOCK, sim, capacity, warmup=0.1, tiers=tiers if with_tiers else None)
    spec = WorkloadSpec("zipf-rag", requests, zipf=RAG)
    row = compare.simulate_point(config, timed(spec, build(spec), qps), setup)
    row.update(model=cost.name, variant=label, qps=qps)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tiers_pcr", description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=RAG.requests)
    p.add_argument("--points", default="llama2-7b-a6000:0.5,llama2-7b-a6000:0.75,llama2-7b-a6000:1.0,"
                   "llama2-13b-a6000:0.25,llama2-13b-a6000:0.5")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    spec = WorkloadSpec("zipf-rag", args.requests, zipf=RAG)
    print(f"reusable share (unbounded cache): {reusable_share(spec):.3f}", file=sys.stderr)
    rows = []
    for point in args.points.split(","):
        name, _, qps = point.partition(":")
        cost = make_cost_model(name)
        assert isinstance(cost, AnalyticCost)
        base: dict[str, float] = {}
        for variant in VARIANTS:
            row = run_point(cost, float(qps), variant, args.requests)
            ttft = float(row["ttft_mean"])
            sched = variant[1].partition("+")[0]
            if variant[0] == "device-only":
                base[sched] = ttft
            row["speedup_vs_device_only"] = base[sched] / ttft  # the same scheduler, device-only
            rows.append(row)
            tiers = row.get("hit_rate_by_tier", {})
            share = " ".join(f"{k} {v:.3f}" for k, v in tiers.items())
            print(f"{name} {qps} req/s {variant[0]:<24} {variant[1]:<20} ttft mean {ttft:7.3f}s "
                  f"p99 {float(row['ttft_p99']):7.3f}s x{row['speedup_vs_device_only']:.2f} "
                  f"hit {float(row['hit_rate_all']):.3f} {share} late {row.get('late_prefetches', 0)}",
                  file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
