"""Decode throughput with a JSON-schema grammar vs without, in one process, and the mask cost per token.

    python -m shard.grammar_bench [--size tiny small] [--batch 32] [--steps 48] [--rounds 3]

Drives :class:`~shard.model_runner.ModelRunner` directly: batch ``--batch`` requests, sampled (seeded),
32-token prompts; the same decode is run without a grammar and with a grammar whose masks are computed
inline (sequentially on the step's thread), prefetched (on a worker thread while the next forward runs) or
in parallel (llguidance's thread pool), interleaved over ``--rounds``; prints medians and the ratios to the
no-grammar run.
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from shard.batch import RequestState
from shard.config import ShardConfig
from shard.demo_model import build_demo_model
from shard.factory import build_runner
from shard.grammar import GRAMMAR_TYPE_JSON, GrammarCompiler, MaskWorker
from shard.model_runner import ModelRunner
from shard.sampling import NextTokenChooser, SamplingParams, StoppingCriteria

BLOCK, POOL_BLOCKS, PROMPT = 16, 2048, 32
# A list of tool calls: long enough that no request finishes within the measured steps.
SCHEMA = {
    "type": "object",
    "properties": {
        "calls": {
            "type": "array",
            "maxItems": 64,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"enum": ["get_weather", "search_flights", "book_hotel"]},
                    "city": {"type": "string", "maxLength": 12},
                    "unit": {"enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer", "minimum": 1, "maximum": 14},
                    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
                },
                "required": ["name", "city", "unit", "days"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["calls"],
    "additionalProperties": False,
}


def _requests(runner: ModelRunner, compiler: GrammarCompiler | None, batch: int, steps: int, seed: int):
    rng = random.Random(seed)
    vocab = runner.model.config.vocab_size
    out = []
    for i in range(batch):
        blocks = list(
            range(
                1 + i * (-(-(PROMPT + steps + 2) // BLOCK)), 1 + (i + 1) * (-(-(PROMPT + steps + 2) // BLOCK))
            )
        )
        slots = [b * BLOCK + o for b in blocks for o in range(BLOCK)]
        prompt = [rng.randrange(3, vocab) for _ in range(PROMPT)]
        chooser = NextTokenChooser(SamplingParams(do_sample=True, seed=seed * 1000 + i))
        state = compiler.state(GRAMMAR_TYPE_JSON, json.dumps(SCHEMA)) if compiler else None
        stopping = StoppingCriteria(frozenset(), steps + 2, ignore_eos_token=True)
        out.append(RequestState(i, prompt, PROMPT, blocks, slots, 0, chooser, stopping, grammar=state))
    return out


def _decode_seconds(runner: ModelRunner, requests: list[RequestState], steps: int) -> float:
    runner.step(requests)  # prefill, not timed
    start = time.perf_counter()
    for _ in range(steps):
        runner.step(requests)
    return time.perf_counter() - start


class MaskTimer:
    """Wraps the worker's synchronous fill to time every batch mask computation."""

    def __init__(self, worker: MaskWorker) -> None:
        self.seconds: list[float] = []
        self.rows: list[int] = []
        self._fill = worker.fill

        def timed(states, vocab_size):
            t0 = time.perf_counter()
            try:
                return self._fill(states, vocab_size)
            finally:
                self.seconds.append(time.perf_counter() - t0)
                self.rows.append(len(states))

        worker.fill = timed


def bench(folder: Path, label: str, batch: int, steps: int, rounds: int) -> None:
    runner = build_runner(
        ShardConfig(
            model_dir=str(folder),
            device="cpu",
            attention_backend="auto",
            num_blocks=POOL_BLOCKS,
            block_size=BLOCK,
        )
    )
    loaded = runner.loaded
    t0 = time.perf_counter()
    compiler = GrammarCompiler(loaded.tokenizer, loaded.model.config.vocab_size, loaded.eos_token_ids)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiler.state(GRAMMAR_TYPE_JSON, json.dumps(SCHEMA))
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiler.state(GRAMMAR_TYPE_JSON, json.dumps(SCHEMA))
    cached = time.perf_counter() - t0
    print(
        f"== {label}: vocab {loaded.model.config.vocab_size}, batch {batch}, "
        f"{steps} decode steps x {rounds} rounds"
    )
    print(
        f"grammar: tokenizer setup {setup * 1e3:.0f} ms, schema compile {cold * 1e3:.2f} ms cold, "
        f"{cached * 1e3:.3f} ms cached (copy)"
    )
    masks = compiler.masks
    timer = MaskTimer(masks)
    modes = {
        "none": None,
        "grammar, inline": (False, False),
        "grammar, prefetched": (True, False),
        "grammar, parallel": (False, True),
    }  # (prefetch, parallel)
    defaults = masks.prefetch, masks.parallel
    print(f"defaults on this host: prefetch={defaults[0]}, parallel={defaults[1]}")
    runs: dict[str, list[float]] = {name: [] for name in modes}
    _decode_seconds(runner, _requests(runner, compiler, batch, steps, 99), 4)  # warm-up
    for r in range(rounds):
        for name, mode in modes.items():
            masks.prefetch, masks.parallel = mode or defaults
            reqs = _requests(runner, None if mode is None else compiler, batch, steps, r)
            runs[name].append(_decode_seconds(runner, reqs, steps))
    masks.prefetch, masks.parallel = defaults
    base = statistics.median(runs["none"])
    for name, seconds in runs.items():
        s = statistics.median(seconds)
        print(
            f"decode {name:<20}: {batch * steps / s:8.1f} tokens/s  ({s / base:.3f}x the time, "
            f"{base / s:.3f}x the throughput)"
        )
    inline = [s for s, n in zip(timer.seconds, timer.rows) if n == batch]
    if inline:
        per_step = statistics.median(inline)
        print(
            f"mask cost at batch {batch}: {per_step * 1e3:.3f} ms per step = {per_step / batch * 1e6:.1f} us "
            "per token (computed on the step's thread, median over inline and parallel runs)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", nargs="+", default=["tiny", "small"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="prism-grammar-bench-"))
    for size in args.size:
        folder = root / f"llama-{size}"
        if not (folder / "model.safetensors").is_file():
            build_demo_model(folder, "llama", size)
        bench(folder, f"llama-{size}", args.batch, args.steps, args.rounds)


if __name__ == "__main__":
    main()
