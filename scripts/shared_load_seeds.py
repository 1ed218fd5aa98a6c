"""``python scripts/shared_load_seeds.py URL MODEL_DIR SEED [SEED ...] [--served-model-name NAME]``: the
side-by-side's shared-prefix load (``bench.peer_loads``, 2 / 4 / 8 / 16 req/s) against one running server,
once per seed, printing each point's TTFT P50 / P99 and its five slowest requests (``C``: the first request
of its prefix, which runs cold; the gap to the request before it). The side-by-side runs seed 0 only; other
seeds show how much its P99, set by a few requests, depends on when the cold prefixes arrive. Each seed's
prompts are its own, so a server is measured cold once per seed. Asserts nothing."""

from __future__ import annotations

import argparse
import asyncio
import random

from bench.loadgen import Endpoint, run_load
from bench.metrics import percentile
from bench.peer_loads import PeerLoads, PeerParams
from bench.workloads.prompts import PromptBuilder, load_tokenizer


def run_seed(endpoint: Endpoint, builder: PromptBuilder, seed: int) -> None:
    params = PeerParams(seed=seed)
    loads = PeerLoads(params, builder)
    rng = random.Random(f"{seed}/shared")  # the prefix of each request, drawn as PeerLoads.shared draws it
    prefix = [rng.randrange(params.shared_prefixes) for _ in range(params.shared_requests)]
    cold = {prefix.index(p) for p in set(prefix)}
    asyncio.run(run_load(endpoint, loads.warmup(), "warmup"))
    for qps in params.shared_qps:
        records = asyncio.run(run_load(endpoint, loads.shared(qps), f"seed {seed} @ {qps:g}")).records
        ttft = [1e3 * r.ttft if r.ttft is not None else float("inf") for r in records]
        slowest = sorted(range(len(ttft)), key=lambda i: -ttft[i])[:5]
        arrivals = [r.arrival for r in records]
        gaps = [1e3 * (arrivals[i] - arrivals[i - 1]) if i else 0.0 for i in range(len(records))]
        top = " ".join(f"#{i}{'C' if i in cold else ''} {ttft[i]:.1f} (gap {gaps[i]:.0f})" for i in slowest)
        p50, p99 = percentile(ttft, 50), percentile(ttft, 99)
        print(f"seed {seed} @ {qps:g} req/s: P50 {p50:.1f} P99 {p99:.1f} ms; slowest {top}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("model_dir", help="the served model folder (its tokenizer builds the prompts)")
    p.add_argument("seeds", type=int, nargs="+")
    p.add_argument("--served-model-name", default="tgi")
    args = p.parse_args()
    endpoint = Endpoint(args.url, "completions", args.served_model_name)
    builder = PromptBuilder(load_tokenizer(args.model_dir))
    for seed in args.seeds:
        run_seed(endpoint, builder, seed)


if __name__ == "__main__":
    main()
