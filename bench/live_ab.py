"""Two live prism-serve servers, A and B (two code trees, or one tree with a switch set apart), up at once and
driven in turn by one load of :mod:`bench.peer_loads`, so both meet the machine in the same state.

    python -m bench.live_ab --model-id /work/peer/model --b-env PRISM_TOKEN_REUSE=0 [--points shared@8 rag@6]
        [--seed 0] [--rounds 6] [--worst N] [--a-tree DIR] [--b-tree DIR]
    python -m bench.live_ab --model-id /work/peer/model --a-tree OLD --points clients@16 --prompt-len 1000
        --output-len 512

A point is an open load at a rate (``shared@8``, ``rag@6``: requests/s), a session load (``chat@8``: sessions
started per second, ``agent@4``: tasks per second; the answers sent back) or ``clients@N``: N closed-loop
clients, 2N requests of ``--prompt-len`` prompt and ``--output-len`` output tokens (ignore_eos). For each point,
each round runs the load once on each server (A first in even rounds, B first in odd ones), with the same fresh
prompts (a new tag per round), after the machine went quiet. Per server it prints the medians over rounds of TTFT
P50 / P99 / mean, the token hit rate, the router's CPU per request (``/proc``) and output tokens/s (from the first
arrival to the last finish), then B / A for each; ``--worst N`` prints each run's N slowest requests (arrival, TTFT,
which shared opening, whether it is that opening's first request). The servers are the launcher's defaults on
loopback, each with its own port and socket folder; both are stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from bench.live_threads import descendants, thread_cpu
from bench.loadgen import Endpoint, LoadRequest, run_closed, run_load, run_sessions
from bench.metrics import RequestRecord, summarize
from bench.peer_loads import PeerLoads, PeerParams, with_clients
from bench.quiet import wait_quiet
from bench.server import LaunchSpec, LiveServer, free_port
from bench.workloads.prompts import PromptBuilder, load_tokenizer

OPENING = 256  # characters of a prompt that name its shared opening (the loads' prefixes are longer)
COLUMNS = ("TTFT P50 ms", "TTFT P99 ms", "TTFT mean ms", "hit rate", "router CPU ms/request", "output tok/s")


def router_cpu(server_pid: int) -> float:
    """CPU seconds so far of the server's router process (all its threads)."""
    return sum(cpu for name, cpu in thread_cpu(descendants(server_pid)).values() if name.startswith("router/"))


def slowest(requests: list[LoadRequest], records: list[RequestRecord], n: int) -> list[str]:
    """The ``n`` slowest requests to a first token, a line each: arrival, TTFT, and which opening (the prompt's
    first ``OPENING`` characters, numbered by first arrival) it has, and whether it is that opening's first."""
    ordered = sorted(requests, key=lambda r: r.arrival)
    opening: dict[str, int] = {}
    firsts = set()
    for i, r in enumerate(ordered):
        if r.prompt[:OPENING] not in opening:
            opening[r.prompt[:OPENING]] = len(opening)
            firsts.add(i)
    timed = sorted(enumerate(sorted(records, key=lambda r: r.arrival)), key=lambda p: -(p[1].ttft or 0.0))
    return [f"arrival {1e3 * ordered[i].arrival:7.1f} ms  TTFT {1e3 * (rec.ttft or 0.0):6.1f} ms  opening "
            f"{opening[ordered[i].prompt[:OPENING]]}{' (its first request)' if i in firsts else ''}"
            for i, rec in timed[:n]]


def one_run(url: str, server_pid: int, loads: PeerLoads, load: str, qps: float, worst: int = 0
            ) -> tuple[float, ...]:
    """One run of the load on one server: the row of ``COLUMNS``; with ``worst``, its slowest requests
    printed."""
    wait_quiet()
    before = router_cpu(server_pid)
    endpoint = Endpoint(url, "completions")
    if load == "clients":
        requests = loads.clients()
        result = asyncio.run(run_closed(endpoint, requests, loads.params.clients, load))
    elif load in ("chat", "agent"):
        requests = []  # NOTE: a session's prompts depend on the answers: no slowest-request lines
        result = asyncio.run(run_sessions(endpoint, getattr(loads, load)(qps), load))
    else:
        requests = getattr(loads, load)(qps)
        result = asyncio.run(run_load(endpoint, requests, load))
    cpu = router_cpu(server_pid) - before
    s = summarize(result.records, result.hit_rate)
    if s["errors"]:
        raise RuntimeError(f"{s['errors']} requests failed on {url}")
    for line in slowest(requests, result.records, worst):
        print(f"  {line}")
    return (1e3 * s["ttft_p50"], 1e3 * s["ttft_p99"], 1e3 * s["ttft_mean"], s["hit_rate"],
            1e3 * cpu / len(result.records), s["throughput_tok_s"])


def compare(servers: dict[str, tuple[str, int]], model: str, load: str, qps: float, seed: int,
            rounds: int, worst: int = 0, params: PeerParams | None = None) -> dict[str, list[tuple[float, ...]]]:
    """``servers``: name -> (url, launcher pid); the rows of every round per server. ``qps``: the clients of a
    ``clients`` load; ``params``: the loads' other settings (default :class:`PeerParams`')."""
    params = replace(params or PeerParams(), seed=seed)
    if load == "clients":
        params = with_clients(params, int(qps))
    loads = PeerLoads(params, PromptBuilder(load_tokenizer(model)))
    for url, _ in servers.values():
        asyncio.run(run_closed(Endpoint(url, "completions"), loads.warmup(), 1, "warm-up"))
    rows: dict[str, list[tuple[float, ...]]] = {name: [] for name in servers}
    names = list(servers)
    for k in range(rounds):
        for name in names if k % 2 == 0 else names[::-1]:
            loads.tag = f"ab{seed}/{k}"  # the same prompts for both servers in a round, uncached on each
            rows[name].append(one_run(*servers[name], loads, load, qps, worst))
            print(f"round {k + 1}/{rounds} {name}: " + ", ".join(f"{c} {v:.3g}" for c, v in
                                                                   zip(COLUMNS, rows[name][-1])), flush=True)
    return rows


def report(rows: dict[str, list[tuple[float, ...]]]) -> None:
    medians = {name: [statistics.median(col) for col in zip(*r)] for name, r in rows.items()}
    print("| server | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, values in medians.items():
        print(f"| {name} | " + " | ".join(f"{v:.4g}" for v in values) + " |")
    a, b = medians["A"], medians["B"]
    print("| B / A | " + " | ".join(f"{y / x:.2f}" if x else "-" for x, y in zip(a, b)) + " |")


def _spec(model: str, tree: str, env: list[str], log_dir: Path) -> LaunchSpec:
    """The server of ``tree``: on PYTHONPATH, and its working folder too, since the launcher starts the router
    with ``python -m``, which puts the working folder first on the path (before, the router of the folder the
    benchmark ran from served both sides)."""
    root = str(Path(tree).resolve())
    pairs = [("PYTHONPATH", root)] + [(k, v) for k, _, v in (kv.partition("=") for kv in env)]
    return LaunchSpec(str(Path(model).resolve()), extra_args=("--hostname", "127.0.0.1", "--master-port",
                      str(free_port())), log_dir=log_dir.resolve(), env=tuple(pairs), cwd=root)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model-id", required=True)
    p.add_argument("--points", nargs="+", default=["shared@8"], metavar="LOAD@QPS",
                   help="LOAD: shared or rag (QPS: requests/s), or clients (QPS: closed-loop clients)")
    p.add_argument("--prompt-len", type=int, default=PeerParams.client_prompt_len, help="clients' prompts")
    p.add_argument("--output-len", type=int, default=PeerParams.client_output, help="clients' outputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--worst", type=int, default=0, metavar="N", help="print each run's N slowest requests")
    for side in ("a", "b"):
        p.add_argument(f"--{side}-tree", default=os.getcwd(), help="the code tree to serve from (PYTHONPATH)")
        p.add_argument(f"--{side}-env", action="append", default=[], metavar="NAME=VALUE", help="for the server")
    args = p.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="live-ab-"))
    a = LiveServer(_spec(args.model_id, args.a_tree, args.a_env, folder / "a"), "qas", "dart")
    b = LiveServer(_spec(args.model_id, args.b_tree, args.b_env, folder / "b"), "qas", "dart")
    with a as url_a, b as url_b:
        assert a.proc is not None and b.proc is not None
        servers = {"A": (url_a, a.proc.pid), "B": (url_b, b.proc.pid)}
        for point in args.points:
            load, _, qps = point.partition("@")
            unit = "clients" if load == "clients" else "requests/s"
            print(f"\n{load} at {qps} {unit}, seed {args.seed}, {args.rounds} rounds")
            params = PeerParams(client_prompt_len=args.prompt_len, client_output=args.output_len)
            report(compare(servers, args.model_id, load, float(qps), args.seed, args.rounds, args.worst, params))
    return 0


if __name__ == "__main__":
    sys.exit(main())
