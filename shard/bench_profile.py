"""``python -m shard.bench_profile --model-dir DIR [--load-format dummy] [--device cuda]``: torch profiles of
one cold 2,048-token prefill, the same prompt with 90% of it cached, and a decode step of 32 requests, on a
loaded runner (kernels compiled by a first unprofiled pass). Prints each step's wall time and its top
operators by device time (by CPU time on a CPU). Asserts nothing."""

from __future__ import annotations

import argparse
import random
import time

import torch
from torch.profiler import ProfilerActivity, profile

from shard.bench import BLOCK, CACHED_TOKENS, POOL_BLOCKS, BlockCounter, _prompt, _request, cold_and_cached
from shard.config import ShardConfig
from shard.factory import build_runner


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m shard.bench_profile", description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--load-format", default="safetensors", choices=("safetensors", "dummy"))
    p.add_argument("--device", default=None)
    p.add_argument("--rows", type=int, default=12, help="operators listed per step")
    args = p.parse_args(argv)
    runner = build_runner(ShardConfig(model_dir=args.model_dir, device=args.device, num_blocks=POOL_BLOCKS,
                                      block_size=BLOCK, load_format=args.load_format))
    cuda = runner.loaded.device.type == "cuda"
    vocab, rng, pool = runner.model.config.vocab_size, random.Random(0), BlockCounter()
    decode = [_request(i, _prompt(rng, 100, vocab), pool.take(140)) for i in range(32)]
    runner.step(decode)  # their prefill: each later step of ``decode`` is a pure decode step

    def cases() -> dict[str, list]:  # fresh prompts; the cold step fills the blocks the cached one reads
        cold, cached = cold_and_cached(rng, vocab, pool)
        return {"cold 2,048-token prefill": cold, f"same prompt, {CACHED_TOKENS} tokens cached": cached,
                "decode step, 32 x 100-token contexts": decode}

    for reqs in cases().values():  # compile and warm every kernel
        runner.step(reqs)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    timed, profiled = cases(), cases()
    for name in timed:
        start = time.perf_counter()
        runner.step(timed[name])
        wall = time.perf_counter() - start
        with profile(activities=activities) as prof:
            runner.step(profiled[name])
        print(f"== {name}: {wall * 1000:.2f} ms wall (unprofiled)")
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
