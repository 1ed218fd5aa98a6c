"""``python -m shard.bench_step --model-dir DIR [--steps 200]``: CPU cost of a decode step of 32 requests.

On a loaded runner, one torch thread, 100-token prompts: per step the thread CPU of ``runner.step``, its
forward and the part after the forward (choice, detokenizing, stopping), as the 20th percentile and median of
``--steps`` steps. For A/B runs of two code trees, run it with each tree on PYTHONPATH in turn (interleaved,
under the bench lock). Asserts nothing."""

from __future__ import annotations

import argparse
import random
import time

import torch

from shard.bench import BLOCK, POOL_BLOCKS, BlockCounter, _prompt, _request
from shard.config import ShardConfig
from shard.factory import build_runner

ROWS, PROMPT, WARM_STEPS = 32, 100, 10


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m shard.bench_step", description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    runner = build_runner(ShardConfig(model_dir=args.model_dir, num_blocks=POOL_BLOCKS, block_size=BLOCK))
    runner.cpu_threads = None
    vocab, rng, pool = runner.model.config.vocab_size, random.Random(0), BlockCounter()
    slots = PROMPT + 1 + WARM_STEPS + args.steps
    requests = [_request(i, _prompt(rng, PROMPT, vocab), pool.take(slots)) for i in range(ROWS)]
    for _ in range(1 + WARM_STEPS):  # the prefill, then decode steps that build the kernels' primitives
        runner.step(requests)
    step, forward, after = [], [], []
    for _ in range(args.steps):
        start = time.thread_time_ns()
        _, times = runner.step(requests)
        step.append(time.thread_time_ns() - start)
        forward.append(times.forward_ns)
        after.append(times.decode_ns)
    print(" | ".join(f"{name} p20 {_ms(xs, 0.2)} median {_ms(xs, 0.5)} ms"
                     for name, xs in (("step thread CPU", step), ("forward", forward), ("after", after))))


def _ms(values: list[int], q: float) -> str:
    return f"{sorted(values)[int(q * len(values))] / 1e6:.3f}"


if __name__ == "__main__":
    main()
