"""``python scripts/clients_sweep.py URL MODEL_DIR [--served-model-name NAME] [--runs N]``: the
side-by-side's closed-loop clients load (``bench.peer_loads``) at other concurrencies and lengths, against one
running server: 8, 64 and 128 clients of 100-token prompts and 128 output tokens, 16 clients of 1,000-token
prompts and 256 output tokens, 32 clients of 512 output tokens. Prints, per shape, the output tokens/s of
each run (fresh prompts each) and the TTFT P50 / P99 of the last run. Run it against each server in turn, as
``scripts/bench-vs-vllm.sh`` does. Asserts nothing."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import replace

from bench.loadgen import Endpoint, run_closed
from bench.metrics import percentile
from bench.peer_loads import PeerLoads, PeerParams
from bench.workloads.prompts import PromptBuilder, load_tokenizer

# (clients, requests, prompt tokens, output tokens)
SHAPES = (
    (8, 32, 100, 128), (64, 128, 100, 128), (128, 256, 100, 128), (16, 32, 1000, 256), (32, 64, 100, 512),
)


def run_shape(
    endpoint: Endpoint, builder: PromptBuilder, index: int, shape: tuple[int, ...], runs: int
) -> str:
    """One shape, ``runs`` times with fresh prompts (``index`` keeps them apart from other shapes')."""
    clients, requests, prompt_len, output = shape
    params = replace(PeerParams(), clients=clients, client_requests=requests, client_prompt_len=prompt_len,
                     client_output=output)
    loads = PeerLoads(params, builder)
    rates, ttft, errors = [], [0.0], 0
    for run in range(runs):
        # NOTE: a distinct run number per shape and run, so that no load hits another's cached prompts
        result = asyncio.run(run_closed(endpoint, loads.clients(100 * (index + 1) + run), clients, "clients"))
        ok = [r for r in result.records if r.error is None]
        errors += len(result.records) - len(ok)
        rates.append(sum(r.output_tokens for r in ok) / result.duration if result.duration > 0 else 0.0)
        ttft = [1e3 * r.ttft for r in ok if r.ttft is not None] or [0.0]
    per_run = " ".join(f"{r:,.0f}" for r in rates)
    return (f"{clients} clients x {prompt_len}+{output} tokens: output tok/s {per_run}; TTFT P50 "
            f"{percentile(ttft, 50):.0f} P99 {percentile(ttft, 99):.0f} ms; failed {errors}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("model_dir", help="the served model folder (its tokenizer builds the prompts)")
    p.add_argument("--served-model-name", default="tgi")
    p.add_argument("--runs", type=int, default=2)
    args = p.parse_args()
    endpoint = Endpoint(args.url, "completions", args.served_model_name)
    builder = PromptBuilder(load_tokenizer(args.model_dir))
    for index, shape in enumerate(SHAPES):
        print(run_shape(endpoint, builder, index, shape, args.runs), flush=True)


if __name__ == "__main__":
    main()
