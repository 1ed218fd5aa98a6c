"""``python scripts/prefill_kernel_ab.py MODEL_DIR THREADS ROUNDS [pointwise]``: whole prefill steps of the shard
with the compiled bf16 prefill kernel (flash_kernels/backends/cpu_prefill.cpp) against torch's CPU flash kernel
(with ``pointwise``: the fused elementwise ops of cpu_pointwise.cpp against the torch ops, the prefill kernel on),
switched per round in alternating order in one process, so that a shared machine's load hits both alike.

Each round and path: for every (cached, new) shape, a fresh random prompt is stepped cold (all its tokens), then
its last ``new`` tokens over the first ``cached`` read from the blocks the cold step filled. Shapes: the RAG
load's steps (512 or 672 cached of 1,041 tokens), a cold 2,001-token prompt, the 90%-cached 2,048-token prompt.
THREADS 0 = the shard's default; 1 thread is timed with ``time.thread_time`` (leaves out time the scheduler
took away), otherwise wall clock. Round 0 warms up and is dropped. Prints medians; asserts nothing.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time

from flash_kernels.backends import cpu_pointwise, cpu_prefill
from shard.bench import BLOCK, POOL_BLOCKS, BlockCounter, _prompt, _request
from shard.config import ShardConfig
from shard.factory import build_runner

SHAPES = ((512, 529), (672, 369), (0, 2001), (1840, 208))  # (cached, new)


def main() -> None:
    model_dir, threads, rounds = sys.argv[1], int(sys.argv[2]) or None, int(sys.argv[3])
    pointwise = sys.argv[4:] == ["pointwise"]

    def switch(on: bool) -> None:
        if pointwise:
            os.environ[cpu_pointwise.ENV] = "1" if on else "0"
        else:
            cpu_prefill.set_enabled(on)
    runner = build_runner(ShardConfig(model_dir=model_dir, num_blocks=POOL_BLOCKS, block_size=BLOCK,
                                      cpu_threads=threads))
    clock = time.thread_time if threads == 1 else time.perf_counter
    print(f"threads {runner.cpu_threads}, clock {clock.__name__}, kernel usable: "
          f"{cpu_prefill.usable(*_probe(runner))}")
    vocab, rng, pool = runner.model.config.vocab_size, random.Random(0), BlockCounter()

    def pair(cached: int, new: int) -> tuple[float, float]:
        prompt, first = _prompt(rng, cached + new, vocab), pool.take(cached + new + 1)
        reuse = first[: cached // BLOCK] + pool.take(new + 1)
        times = []
        for step in ([_request(0, prompt, first)], [_request(1, prompt, reuse, cache_len=cached)]):
            start = clock()
            runner.step(step)
            times.append(clock() - start)
            if not cached:  # a cold prompt only
                return times[0], 0.0
        return times[0], times[1]

    results: dict[tuple[bool, int, int], list[tuple[float, float]]] = {}
    try:
        for i in range(rounds + 1):
            for on in (True, False) if i % 2 else (False, True):
                switch(on)
                for cached, new in SHAPES:
                    timing = pair(cached, new)
                    if i > 0:
                        results.setdefault((on, cached, new), []).append(timing)
    finally:
        switch(True)
    names = ("torch ops", "fused") if pointwise else ("flash", "kernel")
    for cached, new in SHAPES:
        off, on = results[(False, cached, new)], results[(True, cached, new)]
        cold = [statistics.median(c for c, _ in runs) * 1e3 for runs in (off, on)]
        warm = [statistics.median(w for _, w in runs) * 1e3 for runs in (off, on)]
        a, b = names
        line = f"cold {cached + new:5,d}: {a} {cold[0]:6.1f} ms, {b} {cold[1]:6.1f} ms ({cold[1] / cold[0]:.2f}x)"
        if cached:
            line += (f" | {new} new over {cached} cached: {a} {warm[0]:6.1f} ms, {b} {warm[1]:6.1f} ms "
                     f"({warm[1] / warm[0]:.2f}x)")
        print(line)


def _probe(runner):
    """A bf16 q / key cache pair shaped like the model's, for :func:`cpu_prefill.usable`."""
    import torch

    key_cache = runner.kv.layers[0][0]
    attn = runner.model.model.layers[0].self_attn
    return torch.empty(1, attn.heads, key_cache.shape[3], dtype=key_cache.dtype), key_cache


if __name__ == "__main__":
    main()
