"""``python scripts/busy_arrivals.py URL MODEL_DIR SEED``: requests arriving while a batch is busy. 20 closed-loop
clients keep a batch of 20 decoding (100-token prompts, 400 output tokens each, 40 requests) while 60 Poisson
arrivals at 3 req/s (100-token prompts, 16 output tokens) are sent beside them; prints the arrivals' TTFT P50 /
P90 / P99 and the busy clients' output tokens/s. For A/B runs of the shard's switches (e.g.
``PRISM_ANSWER_STEPS``), one server at a time. Asserts nothing."""

from __future__ import annotations

import asyncio
import random
import sys
from dataclasses import replace

from bench.loadgen import Endpoint, LoadRequest, run_closed, run_load
from bench.metrics import percentile
from bench.peer_loads import PeerLoads, PeerParams
from bench.workloads.prompts import PromptBuilder, load_tokenizer


def loads(builder: PromptBuilder, seed: int) -> tuple[list[LoadRequest], list[LoadRequest]]:
    """(the busy clients' requests, the arrivals at their times)."""
    busy = PeerLoads(PeerParams(seed=seed, client_requests=40), builder).clients()
    busy = [replace(r, max_new_tokens=400) for r in busy]
    rng, at, arrivals = random.Random(seed), 1.0, []
    for r in PeerLoads(PeerParams(seed=seed + 1000, client_requests=60), builder).clients():
        at += rng.expovariate(3.0)
        arrivals.append(replace(r, arrival=at, max_new_tokens=16))
    return busy, arrivals


async def measure(endpoint: Endpoint, busy: list[LoadRequest], arrivals: list[LoadRequest]) -> str:
    clients = asyncio.create_task(run_closed(endpoint, busy, 20, "busy"))
    probes = await run_load(endpoint, arrivals, "arrivals")
    done = await clients
    ttft = [1e3 * r.ttft for r in probes.records if r.ttft is not None]
    tokens = sum(r.output_tokens for r in done.records if r.error is None)
    return (f"arrivals TTFT P50 {percentile(ttft, 50):.1f} P90 {percentile(ttft, 90):.1f} "
            f"P99 {percentile(ttft, 99):.1f} ms; busy clients {tokens / done.duration:,.0f} tok/s")


def main() -> None:
    url, model, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    busy, arrivals = loads(PromptBuilder(load_tokenizer(model)), seed)
    print(asyncio.run(measure(Endpoint(url, "completions", "tgi"), busy, arrivals)))


if __name__ == "__main__":
    main()
