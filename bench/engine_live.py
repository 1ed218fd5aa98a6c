"""Live checks of the engine through a running server's ``/v1/completions`` (streaming, temperature 0):

    cold TTFT     fresh prompts of exactly N tokens (random words, so nothing is cached), one at a time;
                  the median time to the first streamed token
    throughput    C closed-loop clients, each sending prompts of P tokens for T output tokens (ignore_eos)
                  back to back for D seconds; output tokens per second over the run

    stall check   (``--stall-check``) 4 streams decoding when a cold N-token prompt arrives: its TTFT and
                  the streams' longest inter-token gap (a whole-prompt prefill stalls them for all of it)

``python -m bench.engine_live --url http://127.0.0.1:3000 --model-id DIR [--cold-tokens 2001 --cold-runs 5]
[--clients 32 --prompt-tokens 100 --output-tokens 128 --seconds 30] [--stall-check]``. Prints numbers;
asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
from pathlib import Path

import aiohttp

from bench.loadgen import Endpoint, LoadRequest, _stream


def exact_prompt(tokenizer, words: list[str], n: int, rng: random.Random) -> str:
    """A prompt of random words that tokenizes (special tokens included) to exactly ``n`` ids."""
    text = " ".join(rng.choice(words) for _ in range(n))
    ids = tokenizer.encode(text).ids
    while len(ids) < n:
        text += " " + rng.choice(words)
        ids = tokenizer.encode(text).ids
    special = len(tokenizer.encode("").ids)
    return tokenizer.decode(ids[special:n], skip_special_tokens=True) if len(ids) > n else text


async def cold_ttft(endpoint: Endpoint, prompts: list[str], n: int) -> list[float]:
    out = []
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for prompt in prompts:
            sent = asyncio.get_running_loop().time()
            rec = await _stream(session, endpoint, LoadRequest(0.0, prompt, 4, n), sent)
            if rec.error:
                raise RuntimeError(rec.error)
            out.append(rec.ttft)
    return out


async def closed_loop(endpoint: Endpoint, prompts: list[str], clients: int, out_tokens: int, seconds: float):
    """(output tokens/s, requests done, median TTFT s) with ``clients`` back-to-back clients."""
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds
    tokens, ttfts, done = [0], [], [0]
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        k = i
        while loop.time() < stop:
            req = LoadRequest(0.0, prompts[k % len(prompts)], out_tokens, 0)
            rec = await _stream(session, endpoint, req, loop.time())
            if rec.error:
                raise RuntimeError(rec.error)
            tokens[0] += rec.output_tokens
            ttfts.append(rec.ttft)
            done[0] += 1
            k += clients

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        start = loop.time()
        await asyncio.gather(*(client(i, session) for i in range(clients)))
        elapsed = loop.time() - start
    return tokens[0] / elapsed, done[0], statistics.median(ttfts)


async def stall_check(endpoint: Endpoint, running: list[str], long_prompt: str) -> tuple[float, float, float]:
    """(long prompt's TTFT, max and median inter-token gap of ``running`` streams) when ``long_prompt``
    arrives while they decode: how long a cold prefill stalls running requests."""
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        streams = [
            asyncio.create_task(_stream(session, endpoint, LoadRequest(0.0, p, 300, 0), loop.time()))
            for p in running
        ]
        await asyncio.sleep(1.5)
        long = await _stream(session, endpoint, LoadRequest(0.0, long_prompt, 4, 0), loop.time())
        records = await asyncio.gather(*streams)
    if long.error or any(r.error for r in records):
        raise RuntimeError(long.error or next(r.error for r in records if r.error))
    gaps = [x for r in records for x in r.itl]
    return long.ttft, max(gaps), statistics.median(gaps)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.engine_live", description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--model-id", required=True, help="model folder (tokenizer.json, words.txt if present)")
    p.add_argument("--cold-tokens", type=int, default=2001)
    p.add_argument("--cold-runs", type=int, default=5)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=100)
    p.add_argument("--output-tokens", type=int, default=128)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--skip-cold", action="store_true")
    p.add_argument("--skip-load", action="store_true")
    p.add_argument(
        "--stall-check", action="store_true", help="also: 4 running streams, then a cold --cold-tokens prompt"
    )
    args = p.parse_args(argv)
    from tokenizers import Tokenizer

    folder = Path(args.model_id)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    words_file = folder / "words.txt"
    words = words_file.read_text().split() if words_file.is_file() else ["word", "cache", "token", "prompt"]
    rng = random.Random(0)
    endpoint = Endpoint(args.url, api="completions")
    if not args.skip_cold:
        prompts = [exact_prompt(tokenizer, words, args.cold_tokens, rng) for _ in range(args.cold_runs + 1)]
        ttfts = asyncio.run(cold_ttft(endpoint, prompts, args.cold_tokens))[1:]  # the first warms the path
        print(
            f"cold {args.cold_tokens}-token TTFT: median {statistics.median(ttfts) * 1000:.0f} ms "
            f"(runs: {', '.join(f'{t * 1000:.0f}' for t in ttfts)})"
        )
    if args.stall_check:
        running = [exact_prompt(tokenizer, words, 50, rng) for _ in range(4)]
        long_prompt = exact_prompt(tokenizer, words, args.cold_tokens, rng)
        ttft, worst, median = asyncio.run(stall_check(endpoint, running, long_prompt))
        print(
            f"stall check: cold {args.cold_tokens}-token prompt TTFT {ttft * 1000:.0f} ms; "
            f"4 running streams' "
            f"max inter-token gap {worst * 1000:.0f} ms (median {median * 1000:.1f} ms)"
        )
    if not args.skip_load:
        prompts = [exact_prompt(tokenizer, words, args.prompt_tokens, rng) for _ in range(4 * args.clients)]
        rate, done, ttft = asyncio.run(
            closed_loop(endpoint, prompts, args.clients, args.output_tokens, args.seconds)
        )
        print(
            f"{args.clients} clients, {args.prompt_tokens}-token prompts, "
            f"{args.output_tokens} output tokens: "
            f"{rate:.0f} output tok/s ({done} requests, median TTFT {ttft * 1000:.0f} ms)"
        )


if __name__ == "__main__":
    main()
