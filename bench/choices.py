"""OpenAI's ``n`` against one server: calls of ``n`` sampled choices of a fresh (cold) prompt on
``/v1/completions``, non-streamed; per ``n``, the median wall time to the whole answer and the server's
prefix-cache hit rate over those calls (the choices after the first can reuse the prompt). Rounds alternate
the values of ``n``; run it once per server for a side by side (vLLM: ``--model`` its served name).

    python -m bench.choices --model-id /work/peer/model --url http://127.0.0.1:3000 [--model tgi]
        [--n 1 4 8] [--prompt-len 1500] [--max-tokens 32] [--rounds 4]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import httpx

from bench.loadgen import hit_rate_between, parse_counters
from bench.workloads.prompts import PromptBuilder, load_tokenizer


def one_call(client: httpx.Client, url: str, model: str, prompt: str, n: int, max_tokens: int
             ) -> tuple[float, float]:
    """Wall seconds of one call of ``n`` choices, and the hit rate between the scrapes around it."""
    before = parse_counters(client.get(url + "/metrics").text)
    body = {"model": model, "prompt": prompt, "n": n, "max_tokens": max_tokens, "temperature": 1.0,
            "ignore_eos": True}
    start = time.perf_counter()
    r = client.post(url + "/v1/completions", json=body)
    wall = time.perf_counter() - start
    r.raise_for_status()
    if len(r.json()["choices"]) != n:
        raise RuntimeError(f"asked for {n} choices, got {len(r.json()['choices'])}")
    return wall, hit_rate_between(before, parse_counters(client.get(url + "/metrics").text))


def measure(client: httpx.Client, url: str, model: str, builder: PromptBuilder, ns: Sequence[int],
            prompt_len: int, max_tokens: int, rounds: int) -> dict[int, list[tuple[float, float]]]:
    """``n`` -> its calls' (wall s, hit rate), each call with a prompt no call used before."""
    out: dict[int, list[tuple[float, float]]] = {n: [] for n in ns}
    for k in range(rounds):
        for n in ns if k % 2 == 0 else list(reversed(ns)):
            prompt = builder.segment_text(f"choices-{time.time_ns()}-{k}-{n}", prompt_len)
            out[n].append(one_call(client, url, model, prompt, n, max_tokens))
    return out


def report(results: dict[int, list[tuple[float, float]]]) -> str:
    lines = ["| n | wall ms, median | min | max | hit rate |", "|---|---|---|---|---|"]
    for n, calls in results.items():
        walls = [1e3 * w for w, _ in calls]
        hit = statistics.median(h for _, h in calls)
        lines.append(f"| {n} | {statistics.median(walls):.0f} | {min(walls):.0f} | {max(walls):.0f} | {hit:.1%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model-id", required=True, help="the model folder (its tokenizer builds the prompts)")
    p.add_argument("--url", required=True)
    p.add_argument("--model", default="tgi", help="the OpenAI model field (vLLM: its served name)")
    p.add_argument("--n", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--prompt-len", type=int, default=1500)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args(argv)
    builder = PromptBuilder(load_tokenizer(args.model_id))
    with httpx.Client(timeout=600) as client:
        results = measure(client, args.url.rstrip("/"), args.model, builder, args.n, args.prompt_len,
                          args.max_tokens, args.rounds)
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
