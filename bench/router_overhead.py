"""The router's own overhead: the real router (HTTP, validation, tokenizer, scheduler, batcher, gRPC client)
in front of an in-process FAKE shard (a real grpc.aio server on a Unix socket whose compute is trivial), so
everything measured is the router's cost plus one HTTP and the gRPC hops.

    python -m bench.router_overhead [--requests 300] [--concurrency 64] [--duration 10] [--json]

The server (fake shard + router, one event loop) runs in a child process; this process is the load client.
It reports latency p50/p99 of sequential requests (``/info``: HTTP only; ``/generate`` with 1 new token: one
Prefill; with N new tokens: Prefill + N-1 Decodes), the same through ``Backend.generate_stream`` alone (batching
loop + scheduler + gRPC, no HTTP, measured in this process afterwards) and the request rate sustained by C
closed-loop clients.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

PROMPT = " ".join(f"w{i % 50}" for i in range(32))  # 32 tokens for the word-level tokenizer below


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.router_overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=300, help="sequential requests per latency probe")
    p.add_argument("--concurrency", type=int, default=64, help="closed-loop clients for the rate test")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of the rate test")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--scheduler", default="qas")
    p.add_argument("--cache-policy", default="dart")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


# ---- server side (child process) ------------------------------------------------------------------------


def write_tokenizer(folder: Path) -> None:
    """A whitespace word-level tokenizer (``w0``..``w999``): the fake shard also counts words as tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "</s>": 1, **{f"w{i}": i + 2 for i in range(1000)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))


def serve(port: int, folder: str, scheduler: str, policy: str) -> None:
    os.setsid()  # NOTE: a process group of its own, with the router's grammar workers: stopped as one
    asyncio.run(_serve(port, folder, scheduler, policy))


async def _serve(port: int, folder: str, scheduler: str, policy: str) -> None:
    from router_py import cli
    from router_py.shard_client.fake_shard import FakeCluster, FakeOptions

    cluster = await FakeCluster(f"{folder}/shard", 1, FakeOptions(num_blocks=8192)).start()
    args = cli.parse_args([
        "--master-shard-uds-path", cluster.master_path, "--tokenizer-name", folder, "--hostname", "127.0.0.1",
        "--port", str(port), "--scheduler", scheduler, "--cache-policy", policy, "--max-input-tokens", "1000",
        "--max-total-tokens", "2048", "--max-concurrent-requests", "1024",
    ])
    await cli.serve(args)


# ---- backend only (batcher + gRPC, no HTTP), in this process ------------------------------------------------


async def backend_latency(folder: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """p50/p99 of ``Backend.generate_stream`` alone (the batching loop, scheduler and gRPC hops)."""
    from router_py import cli
    from router_py.engine.batcher import Batcher
    from router_py.backend_api import ChooserParams, StoppingParams, ValidRequest
    from router_py.metrics import Metrics
    from router_py.scheduling.registry import make_scheduler
    from router_py.shard_client.client import ShardClient
    from router_py.shard_client.fake_shard import FakeCluster, FakeOptions
    from router_py.engine.warmup import handshake

    cluster = await FakeCluster(f"{folder}/backend-shard", 1, FakeOptions(num_blocks=8192)).start()
    client = await ShardClient.connect(cluster.master_path)
    flags = cli.parse_args(["--scheduler", args.scheduler, "--cache-policy", args.cache_policy,
                            "--max-input-tokens", "1000", "--max-total-tokens", "2048"])
    config = cli.backend_config(flags)
    info, shard = await handshake(client, config)
    scheduler = make_scheduler(cli.scheduler_config(flags, info, shard))
    batcher = Batcher(client, info, config, scheduler, Metrics(), lambda text, special: text.split())
    batcher.start()

    async def once(max_new: int) -> float:
        req = ValidRequest(inputs=PROMPT, input_ids=tuple(range(32)), truncate=32, sampling=ChooserParams(),
                           stopping=StoppingParams(max_new_tokens=max_new))
        start = time.perf_counter()
        async for _ in batcher.generate_stream(req):
            pass
        return time.perf_counter() - start

    try:
        result = {}
        for max_new in (1, args.max_new_tokens):
            samples = sorted([await once(max_new) for _ in range(args.requests)])
            result[f"backend_{max_new}"] = _percentiles(samples)
        return result
    finally:
        await batcher.stop()
        await client.close()
        await cluster.stop()


def _percentiles(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": 1e3 * statistics.median(samples), "p99_ms": 1e3 * samples[int(0.99 * (len(samples) - 1))]}


# ---- client side ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_ready(http: aiohttp.ClientSession, url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            async with http.get(f"{url}/health") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("the router under test did not become healthy")


async def one(http: aiohttp.ClientSession, url: str, max_new_tokens: int | None) -> float:
    """Seconds for one request: GET /info when ``max_new_tokens`` is None, else a greedy /generate."""
    start = time.perf_counter()
    if max_new_tokens is None:
        async with http.get(f"{url}/info") as r:
            await r.read()
    else:
        body = {"inputs": PROMPT, "parameters": {"max_new_tokens": max_new_tokens}}
        async with http.post(f"{url}/generate", json=body) as r:
            payload = await r.json()
            assert r.status == 200, payload
    return time.perf_counter() - start


async def latency(http: aiohttp.ClientSession, url: str, n: int, max_new_tokens: int | None) -> dict[str, float]:
    return _percentiles(sorted([await one(http, url, max_new_tokens) for _ in range(n)]))


async def rate(http: aiohttp.ClientSession, url: str, clients: int, duration: float, max_new: int) -> dict:
    done: list[float] = []
    stop_at = time.perf_counter() + duration

    async def client() -> None:
        while time.perf_counter() < stop_at:
            done.append(await one(http, url, max_new))

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    done.sort()
    return {
        "clients": clients, "seconds": round(elapsed, 2), "requests": len(done),
        "requests_per_s": len(done) / elapsed, "tokens_per_s": len(done) * max_new / elapsed,
        "p50_ms": 1e3 * statistics.median(done), "p99_ms": 1e3 * done[int(0.99 * (len(done) - 1))],
    }


async def measure(url: str, args: argparse.Namespace) -> dict:
    connector = aiohttp.TCPConnector(limit=max(args.concurrency, 1))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as http:
        await wait_ready(http, url)
        await latency(http, url, 20, args.max_new_tokens)  # warm caches and connections
        result = {
            "info": await latency(http, url, args.requests, None),
            "generate_1": await latency(http, url, args.requests, 1),
            f"generate_{args.max_new_tokens}": await latency(http, url, args.requests, args.max_new_tokens),
            "rate": await rate(http, url, args.concurrency, args.duration, args.max_new_tokens),
        }
    steps = max(args.max_new_tokens - 1, 1)
    long = result[f"generate_{args.max_new_tokens}"]["p50_ms"]
    result["decode_step_p50_ms"] = (long - result["generate_1"]["p50_ms"]) / steps
    return result


def report(result: dict, args: argparse.Namespace) -> str:
    n = args.max_new_tokens
    lines = [f"router overhead, fake in-process shard, scheduler {args.scheduler} + {args.cache_policy}, "
             f"{args.requests} sequential requests per row (prompt 32 tokens)"]
    for key, label in (("backend_1", "batcher+gRPC only, 1 token"), (f"backend_{n}", f"batcher+gRPC only, {n} tokens"),
                       ("info", "GET /info (HTTP only)"), ("generate_1", "/generate 1 token (Prefill)"),
                       (f"generate_{n}", f"/generate {n} tokens (Prefill + {n - 1} Decode)")):
        lines.append(f"  {label:<42} p50 {result[key]['p50_ms']:7.2f} ms   p99 {result[key]['p99_ms']:7.2f} ms")
    lines.append(f"  per decode step (p50 difference)            {result['decode_step_p50_ms']:7.2f} ms")
    r = result["rate"]
    lines.append(f"  sustained: {r['clients']} clients x {r['seconds']} s, {n} tokens each: "
                 f"{r['requests_per_s']:.1f} req/s, {r['tokens_per_s']:.0f} tokens/s "
                 f"(latency p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms)")
    return "\n".join(lines)


def _stop_group(server: multiprocessing.process.BaseProcess) -> None:
    """SIGTERM the server's process group (the router and its workers), SIGKILL what is left after 10 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, sig)  # type: ignore[arg-type]
        server.join(10)
        if not server.is_alive():
            return


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="router-overhead-") as folder:
        write_tokenizer(Path(folder))
        port = free_port()
        ctx = multiprocessing.get_context("spawn")
        # NOTE: not a daemon: the router starts its grammar-check worker processes, which a daemon may not have
        server = ctx.Process(target=serve, args=(port, folder, args.scheduler, args.cache_policy))
        server.start()
        try:
            result = asyncio.run(measure(f"http://127.0.0.1:{port}", args))
        finally:
            _stop_group(server)
        result.update(asyncio.run(backend_latency(folder, args)))
    print(json.dumps(result, indent=2) if args.json else report(result, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
