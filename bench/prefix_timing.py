"""The prefix-cache timing side channel, measured on a running server: time to first token of a prompt whose
prefix is cached (hit) against the same-length prompt with a fresh prefix (miss), interleaved, medians.

    python -m bench.prefix_timing --url http://127.0.0.1:3000 [--words 600] [--rounds 7] [--key KEY]
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx


def ttft(http: httpx.Client, url: str, prompt: str, headers: dict[str, str]) -> float:
    body = {"inputs": prompt, "parameters": {"max_new_tokens": 1}}
    start = time.perf_counter()
    with http.stream("POST", f"{url}/generate_stream", json=body, headers=headers) as resp:
        for line in resp.iter_lines():
            if line.startswith("data:"):
                elapsed = time.perf_counter() - start
                if '"token"' not in line:
                    raise RuntimeError(f"not a token event: {line[:200]}")
                return elapsed
    raise RuntimeError("no token event")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:3000")
    p.add_argument("--words", type=int, default=600)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--key", default=None)
    args = p.parse_args()
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    words = lambda tag: " ".join(f"{tag}{i}" for i in range(args.words))  # noqa: E731
    cached = words("c")
    hits, misses = [], []
    with httpx.Client(timeout=300) as http:
        ttft(http, args.url, cached + " warm", headers)
        for r in range(args.rounds):
            # NOTE: a fresh one-letter tag per round: a new prefix that tokenizes like the cached one
            misses.append(ttft(http, args.url, words("defghijklmnopqrstuvwxyz"[r % 23] * (1 + r // 23)) + f" q{r}",
                               headers))
            hits.append(ttft(http, args.url, cached + f" q{r}", headers))
    hit, miss = statistics.median(hits), statistics.median(misses)
    print(f"TTFT median over {args.rounds} interleaved rounds, {args.words}-word prompts: "
          f"hit {hit * 1000:.1f} ms, miss {miss * 1000:.1f} ms, miss/hit {miss / hit:.2f}x")


if __name__ == "__main__":
    main()
