"""``python scripts/gpu_smoke.py --model-id DIR --url URL``: a running server's greedy tokens over TGI's
``/generate`` equal transformers' fp32 ``generate`` on the CPU for the same folder: each prompt alone, then the
same prompts again (prefix-cache hits), then all at once (one batch; on a GPU its decode steps replay CUDA
graphs). For a server started with ``--dtype float32``. Prints each difference; exit status 1 if any.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

PROMPTS = (
    "The quick brown fox",
    "Once upon a time there was a cache that",
    "A shared system prompt that every question repeats. " * 8 + "Which one?",
    "Hello",
)
NEW_TOKENS = 16


def served_tokens(url: str, prompt: str, new_tokens: int = NEW_TOKENS) -> list[int]:
    body = json.dumps({"inputs": prompt, "parameters": {"max_new_tokens": new_tokens, "details": True}})
    req = urllib.request.Request(f"{url}/generate", body.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return [t["id"] for t in json.load(resp)["details"]["tokens"]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu_smoke.py", description=__doc__.splitlines()[0])
    p.add_argument("--model-id", required=True)
    p.add_argument("--url", required=True)
    args = p.parse_args(argv)
    from shard.bench_vs_hf import transformers_greedy

    expected = dict(zip(PROMPTS, transformers_greedy(args.model_id, list(PROMPTS), NEW_TOKENS)))
    rounds = {
        "alone": [served_tokens(args.url, q) for q in PROMPTS],
        "again (cache hits)": [served_tokens(args.url, q) for q in PROMPTS],
    }
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        rounds["all at once"] = list(pool.map(lambda q: served_tokens(args.url, q), PROMPTS))
    bad = 0
    for name, got in rounds.items():
        for q, tokens in zip(PROMPTS, got):
            if tokens != expected[q]:
                bad += 1
                print(f"DIFFERENT ({name}) {q[:40]!r}: served {tokens} transformers {expected[q]}")
    print(f"{3 * len(PROMPTS) - bad} of {3 * len(PROMPTS)} greedy continuations equal transformers' fp32")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
