"""Live benchmark of the KV tiers (docs/kv-tiers-wire.md): the same multi-turn load against the same server
without tiers and with a host and a disk tier, the device pool 4x smaller than the load's reusable working
set.

Load: ``--sessions`` chat sessions, each a system prompt of ``--system-tokens`` and ``--turns`` user turns of
``--turn-tokens`` (turn t's prompt is the system prompt and turns 1..t, so each turn reuses the previous one's
prompt). ``--concurrent`` sessions are active at a time, their turns interleaved; ``--rounds`` passes over all
sessions (users coming back). Open loop, Poisson arrivals at ``--qps``, greedy, ``--max-new`` tokens each.
Working set W = the tokens of every session's longest prompt; device pool W/4 (+ the reserved block), host
tier W/2, disk tier 2W.

Prints (and writes OUT/kv_tiers_live.json): per server the recomputed prompt tokens (queried - hit, from
``/metrics``), TTFT P50/P99, hits per tier, bytes moved; then the ratios tiers / no tiers.

``python -m bench.kv_tiers_live --model-id DIR --out OUT [--rounds 2 --sessions 16 --turns 6 --concurrent 8
--qps 0.5]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from pathlib import Path

import aiohttp

from bench.loadgen import Endpoint, LoadRequest, parse_counters, run_load
from bench.metrics import summarize
from bench.server import LaunchSpec, LiveServer
from bench.workloads.prompts import PromptBuilder, load_tokenizer

BLOCK = 16


def build_load(args: argparse.Namespace, builder: PromptBuilder) -> tuple[list[LoadRequest], int]:
    """(requests in arrival order, working set in tokens)."""
    def prompt(session: int, turn: int) -> tuple[str, int]:
        segments = [(f"system-{session}", args.system_tokens)]
        segments += [(f"user-{session}-{t}", args.turn_tokens) for t in range(1, turn + 1)]
        return "".join(builder.segment_text(s, n) for s, n in segments), sum(n for _, n in segments)

    working_set = args.sessions * (args.system_tokens + args.turns * args.turn_tokens)
    rng = random.Random(args.seed)
    order = []
    for _ in range(args.rounds):
        for first in range(0, args.sessions, args.concurrent):
            group = range(first, min(first + args.concurrent, args.sessions))
            order += [(s, t) for t in range(1, args.turns + 1) for s in group]
    requests, now = [], 0.0
    for session, turn in order:
        now += rng.expovariate(args.qps)
        text, tokens = prompt(session, turn)
        requests.append(LoadRequest(now, text, args.max_new, tokens))
    return requests, working_set


async def scrape(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        text = await resp.text()
    out = parse_counters(text)
    for line in text.splitlines():  # NOTE: labelled series kept apart (parse_counters sums over labels)
        if line.startswith(("prism_prefix_cache_tier_hit_tokens{", "prism_kv_tier_bytes_moved{")):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def run_server(args, name: str, extra: tuple[str, ...], requests: list[LoadRequest]) -> dict:
    spec = LaunchSpec(args.model_id, extra_args=extra, log_dir=Path(args.out) / name)
    with LiveServer(spec, "qas", "dart") as url:
        before = asyncio.run(scrape(url))
        result = asyncio.run(run_load(Endpoint(url), requests, desc=name))
        after = asyncio.run(scrape(url))
    delta = {k: after[k] - before.get(k, 0.0) for k in after if k.startswith(("prism_", "tgi_request_count"))}
    row = summarize(result.records, result.hit_rate)
    row["queried_tokens"] = delta["prism_prefix_cache_queried_tokens"]
    row["recomputed_tokens"] = row["queried_tokens"] - delta["prism_prefix_cache_hit_tokens"]
    row["tiers"] = {k: v for k, v in delta.items() if "tier" in k}
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.kv_tiers_live", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-id", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--concurrent", type=int, default=8)
    p.add_argument("--qps", type=float, default=0.5)
    p.add_argument("--system-tokens", type=int, default=256)
    p.add_argument("--turn-tokens", type=int, default=48)
    p.add_argument("--max-new", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    requests, working_set = build_load(args, PromptBuilder(load_tokenizer(args.model_id)))
    device_blocks = working_set // 4 // BLOCK + 1
    longest = args.system_tokens + args.turns * args.turn_tokens + args.max_new
    if (device_blocks - 1) * BLOCK < longest + 8:
        p.error(f"a device pool of W/4 = {(device_blocks - 1) * BLOCK} tokens cannot hold one request of "
                f"{longest}: more --sessions or fewer --turns")
    common = ("--num-blocks", str(device_blocks), "--block-size", str(BLOCK), "--hostname", "127.0.0.1",
              "--max-batch-prefill-tokens", str(min(2048, (device_blocks - 1) * BLOCK)),
              "--max-total-tokens", str(longest + 8), "--max-input-tokens", str(longest))
    tiers = ("--kv-host-tokens", str(working_set // 2), "--kv-disk-tokens", str(2 * working_set),
             "--kv-disk-path", str(out / "disk"))
    print(f"{len(requests)} requests, working set {working_set} tokens, device pool {device_blocks} blocks "
          f"({(device_blocks - 1) * BLOCK} tokens), host {working_set // 2}, disk {2 * working_set} tokens")
    rows = {"no_tiers": run_server(args, "no_tiers", common, requests)}
    rows["tiers"] = run_server(args, "tiers", common + tiers, requests)
    base, new = rows["no_tiers"], rows["tiers"]
    rows["ratios"] = {
        "recomputed_tokens": new["recomputed_tokens"] / base["recomputed_tokens"],
        "ttft_p99": new["ttft_p99"] / base["ttft_p99"],
        "ttft_p50": new["ttft_p50"] / base["ttft_p50"],
    }
    rows["setup"] = {**vars(args), "working_set_tokens": working_set, "device_blocks": device_blocks}
    (out / "kv_tiers_live.json").write_text(json.dumps(rows, indent=2, default=float))
    for name in ("no_tiers", "tiers"):
        r = rows[name]
        print(f"{name:9s} recomputed {r['recomputed_tokens']:.0f} of {r['queried_tokens']:.0f} prompt "
              f"tokens, TTFT p50 {r['ttft_p50']:.3f}s p99 {r['ttft_p99']:.3f}s, errors {r['errors']}  {r['tiers']}")
    print("ratios (tiers / no tiers):", json.dumps(rows["ratios"]))


if __name__ == "__main__":
    main()
