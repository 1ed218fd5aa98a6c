"""``python scripts/cached_prefill_ab.py MODEL_DIR THREADS ROUNDS [wall]``: the 90%-cached 2,048-token prefill
against the same prompt cold, before and after the change of docs/performance.md ("The 90%-cached prefill"),
interleaved in one process so that a shared machine's load hits both alike.

Variants (swapped in per round, in alternating order): ``main`` (one masked, padded SDPA call and the thread
rule by new tokens), ``branch`` (the two flash calls and ``step_size``) and, with default threads, the new
attention under the old rule. THREADS 0 = the shard's default. Timed with ``time.thread_time`` on 1 thread
(leaves out time the scheduler took away; ``wall`` for ``time.perf_counter``), wall clock otherwise.
One-off evaluation: prints numbers, asserts nothing.
"""

from __future__ import annotations

import random
import statistics
import sys
import time

import torch

from flash_kernels.backends import sdpa
from shard import model_runner
from shard.bench import BLOCK, POOL_BLOCKS, BlockCounter, cold_and_cached
from shard.config import ShardConfig
from shard.factory import build_runner


def masked_padded(q, key_cache, value_cache, block_row, length, scale):  # main's path for this case
    n = q.shape[0]
    cu, seqlens = torch.tensor([0, n], dtype=torch.int32), torch.tensor([length], dtype=torch.int32)
    return sdpa._prefill_padded(q, key_cache, value_cache, block_row[None], cu, seqlens, n, length, scale)


def new_tokens_only(requests, hidden):  # main's thread rule
    return sum(r.next_len for r in requests)


def main() -> None:
    model_dir, threads, rounds = sys.argv[1], int(sys.argv[2]) or None, int(sys.argv[3])
    clock = time.thread_time if threads == 1 and sys.argv[4:] != ["wall"] else time.perf_counter
    config = ShardConfig(model_dir=model_dir, num_blocks=POOL_BLOCKS, block_size=BLOCK, cpu_threads=threads)
    runner = build_runner(config)
    print(f"threads {runner.cpu_threads}, clock {clock.__name__}")
    vocab, rng, pool = runner.model.config.vocab_size, random.Random(0), BlockCounter()
    variants = {
        "main": (masked_padded, new_tokens_only),
        "branch": (sdpa._prefill_after_prefix, model_runner.step_size),
    }
    if threads is None:
        variants["new attention, old rule"] = (sdpa._prefill_after_prefix, new_tokens_only)

    def pair(name: str) -> tuple[float, float]:
        sdpa._prefill_after_prefix, model_runner.step_size = variants[name]
        cold_step, cached_step = cold_and_cached(rng, vocab, pool)
        start = clock()
        runner.step(cold_step)
        cold = clock() - start
        start = clock()
        runner.step(cached_step)
        return cold, clock() - start

    for name in list(variants) * 2:  # warm every path
        pair(name)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for i in range(rounds):
        for name in list(results) if i % 2 == 0 else list(results)[::-1]:
            results[name].append(pair(name))
    for name, runs in results.items():
        ratios = sorted(w / c for c, w in runs)
        print(
            f"{name:24s} cold {statistics.median(c for c, _ in runs) * 1e3:6.1f} ms, "
            f"cached {statistics.median(w for _, w in runs) * 1e3:5.1f} ms, median ratio "
            f"{statistics.median(ratios):.3f} (quartiles {ratios[len(ratios) // 4]:.3f}-"
            f"{ratios[3 * len(ratios) // 4]:.3f})"
        )


if __name__ == "__main__":
    main()
