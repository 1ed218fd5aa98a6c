"""Do slow grammar compiles stall other requests? Launches the demo stack, streams plain requests and measures
their inter-token gaps, alone and while requests with large, never-seen JSON schemas (each a cache miss in the
router's check and the shard's compile) arrive. Prints medians / maxima; asserts nothing.

    PYTHONPATH=. python scripts/grammar_queue_stall.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration-tests"))
from conftest import Stack  # noqa: E402

PLAIN, PLAIN_TOKENS, HEAVY = 8, 48, 6


def heavy_schema(tag: int) -> dict:
    """50 properties x 200 enum values (~40 ms engine check + ~35 ms meta-schema check in the router, ~25 ms
    compile in the shard): distinct per ``tag`` so nothing is cached."""
    return {
        "type": "object",
        "properties": {f"k{i}": {"enum": [f"v{tag}_{j}" for j in range(200)]} for i in range(50)},
        "required": ["k0"],
    }


async def plain_stream(client: httpx.AsyncClient, i: int) -> tuple[float, list[float]]:
    """(time to first token, inter-token gaps) of one streamed plain request."""
    body = {"inputs": f"Request {i} about the weather", "parameters": {"max_new_tokens": PLAIN_TOKENS}}
    start, stamps = time.perf_counter(), []
    async with client.stream("POST", "/generate_stream", json=body) as resp:
        async for line in resp.aiter_lines():
            if line.startswith("data:"):
                stamps.append(time.perf_counter())
    return stamps[0] - start, [b - a for a, b in zip(stamps, stamps[1:])]


async def heavy(client: httpx.AsyncClient, tag: int) -> float:
    body = {
        "inputs": "Fill the form",
        "parameters": {"max_new_tokens": 8, "grammar": {"type": "json", "value": heavy_schema(tag)}},
    }
    start = time.perf_counter()
    resp = await client.post("/generate", json=body)
    assert resp.status_code == 200, resp.text
    return time.perf_counter() - start


async def one_round(url: str, with_heavy: bool, tag: int) -> tuple[list[float], list[float], list[float]]:
    """Plain streams, with HEAVY grammar requests (schemas ``tag * 100 + k``) alongside when
    ``with_heavy``."""
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        plain = [plain_stream(client, i) for i in range(PLAIN)]
        heavies = [heavy(client, tag * 100 + k) for k in range(HEAVY)] if with_heavy else []
        results = await asyncio.gather(*plain, *heavies)
    streams = results[:PLAIN]
    return [t for t, _ in streams], [g for _, gaps in streams for g in gaps], list(results[PLAIN:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    stack = Stack(["--num-blocks", "1024"]).wait_healthy()
    try:
        asyncio.run(one_round(stack.url, True, 0))  # warm-up; schemas of tag 0 are then cached everywhere
        modes = {
            "plain only": (False, None),
            "with 6 cached large grammars": (True, 0),
            "with 6 new large grammars": (True, -1),
        }
        stats: dict[str, tuple[list, list, list]] = {name: ([], [], []) for name in modes}
        for r in range(args.rounds):
            for name, (with_heavy, tag) in modes.items():
                ttft, gaps, heavy_s = asyncio.run(one_round(stack.url, with_heavy, r + 1 if tag == -1 else 0))
                for acc, values in zip(stats[name], (ttft, gaps, heavy_s)):
                    acc.extend(values)
        for name, (ttft, gaps, heavy_s) in stats.items():
            gaps.sort()
            print(
                f"{name:<28}: plain TTFT median {statistics.median(ttft) * 1e3:6.1f} ms; inter-token gap "
                f"median {statistics.median(gaps) * 1e3:5.1f} ms, "
                f"p99 {gaps[int(0.99 * len(gaps))] * 1e3:6.1f} ms, "
                f"max {gaps[-1] * 1e3:6.1f} ms"
                + (
                    f"; grammar requests' latency median {statistics.median(heavy_s) * 1e3:.0f} ms"
                    if heavy_s
                    else ""
                )
            )
    finally:
        stack.close()


if __name__ == "__main__":
    main()
