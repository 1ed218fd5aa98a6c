"""``python -m shard.bench_decode --model-dir DIR``: the decode step's cost with each of the CPU engine's step
optimizations switched off and on in ONE process, in interleaved rounds, so a busy shared machine moves every
variant alike. Prints per-step thread CPU time (ms; not wall time, which other processes' load inflates) and
ratios to the first variant. Asserts nothing.

Variants (switched on one loaded runner, nothing rebuilt):
    before        SDPA decode over a gathered copy of K/V; separate q/k/v and gate/up matmuls; F.linear
    +kernel       the compiled decode kernel (flash_kernels/backends/cpu_decode.cpp)
    +fused        and the fused q/k/v and gate/up projections (shard/layers/fusion.py)
    +packed       and the prepacked weights (bf16: shard/layers/packed_linear.py, AMX tiles or oneDNN; fp32:
                  shard/layers/panel_linear.py, AVX2 panels)
    +direct       and the layers' kernels called directly (shard/layers/cpu_direct.py, where it applies): the
                  default
Loads: 32 requests with 100-token prompts (the 32-client throughput load) and 12 with 1,040-token prompts (the
RAG load's contexts), both decoding on 1 thread. Then decode attention alone, one layer's call at the model's
shape: the SDPA path over a gathered copy against the compiled kernel.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from flash_kernels.backends import cpu_decode
from flash_kernels.backends.sdpa import decode_gathered
from shard.bench import BLOCK, _prompt, _request
from shard.config import ShardConfig
from shard.factory import build_runner
from shard.layers import cpu_direct
from shard.layers.packed_linear import PackedLinear, TiledLinear
from shard.layers.panel_linear import PanelLinear
from shard.model_runner import ModelRunner

LOADS = {"32 x 100-token prompts": (32, 100), "12 x 1,040-token prompts": (12, 1040)}


def switches(runner: ModelRunner) -> dict[str, Callable[[], None]]:
    """name -> a function that puts the runner in that variant."""
    packed = [(m, type(m)) for m in runner.model.modules() if isinstance(m, (PackedLinear, TiledLinear, PanelLinear))]
    fused = [(m, name, getattr(m, name)) for m in runner.model.modules()
             for name in ("qkv_proj", "gate_up_proj") if getattr(m, name, None) is not None]

    def setter(use_kernel: bool, use_fused: bool, use_packed: bool, direct: bool = False
               ) -> Callable[[], None]:
        def apply() -> None:
            cpu_decode.set_enabled(use_kernel)
            cpu_direct.set_enabled(direct)
            for m, name, module in fused:
                setattr(m, name, module if use_fused else None)
            for m, kind in packed:
                m.__class__ = kind if use_packed else nn.Linear
        return apply

    return {"before": setter(False, False, False), "+kernel": setter(True, False, False),
            "+fused": setter(True, True, False), "+packed": setter(True, True, True),
            "+direct": setter(True, True, True, True)}


def _requests(runner: ModelRunner, batch: int, prompt: int, first_block: int, rng: random.Random) -> list:
    per = -(-(prompt + 400) // BLOCK)
    reqs = [_request(i, _prompt(rng, prompt, runner.model.config.vocab_size),
                     list(range(first_block + i * per, first_block + (i + 1) * per))) for i in range(batch)]
    for i in range(0, batch, 4):
        runner.step(reqs[i : i + 4])
    return reqs


def step_ms(runner: ModelRunner, reqs: list, steps: int) -> float:
    start = time.thread_time()
    for _ in range(steps):
        runner.step(reqs)
    return (time.thread_time() - start) / steps * 1e3


def attention_us(runner: ModelRunner, batch: int, context: int, rounds: int) -> tuple[float, float]:
    """(SDPA over a gathered copy, compiled kernel) thread CPU us of one decode attention call at the model's
    head shape, ``batch`` requests of ``context`` keys in shuffled blocks; medians of interleaved rounds."""
    c = runner.model.config
    per = -(-context // BLOCK)
    gen = torch.Generator().manual_seed(0)
    shape = (batch * per + 1, BLOCK, c.kv_heads, c.head_dim)
    kc, vc = (torch.randn(shape, generator=gen).to(runner.loaded.dtype) for _ in range(2))
    tables = (torch.randperm(batch * per, generator=gen) + 1).view(batch, per).int()
    lengths = torch.full((batch,), context, dtype=torch.int32)
    q = torch.randn(batch, c.heads, c.head_dim, generator=gen).to(runner.loaded.dtype)
    args = (q, kc, vc, tables, lengths, context, c.head_dim**-0.5)
    calls = (lambda: decode_gathered(*args), lambda: cpu_decode.decode(*args))
    times: list[list[float]] = [[], []]
    for _ in range(rounds):
        for i, call in enumerate(calls):
            start = time.thread_time()
            for _ in range(10):
                call()
            times[i].append((time.thread_time() - start) / 10 * 1e6)
    return statistics.median(times[0]), statistics.median(times[1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--dtype", default=None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=6, help="decode steps per variant per round")
    args = p.parse_args(argv)
    runner = build_runner(ShardConfig(model_dir=args.model_dir, device="cpu", dtype=args.dtype,
                                      num_blocks=4096, cpu_threads=1))
    torch.set_num_threads(1)
    rng, first, loads = random.Random(0), 1, {}
    for name, (batch, prompt) in LOADS.items():
        loads[name] = _requests(runner, batch, prompt, first, rng)
        first += batch * -(-(prompt + 400) // BLOCK)
    variants = switches(runner)
    times = {(load, v): [] for load in loads for v in variants}
    for _ in range(args.rounds):
        for load, reqs in loads.items():
            for v, apply in variants.items():
                apply()
                times[(load, v)].append(step_ms(runner, reqs, args.steps))
    variants["+direct"]()
    print(f"# {args.model_dir}, dtype {runner.loaded.dtype}, 1 thread; decode step, thread CPU ms (median of "
          f"{args.rounds} interleaved rounds of {args.steps} steps) and ratio to 'before'")
    for load in loads:
        base = statistics.median(times[(load, "before")])
        medians = {v: statistics.median(times[(load, v)]) for v in variants}
        cells = [f"{v} {m:.2f} ({m / base:.2f}x)" for v, m in medians.items()]
        print(f"{load}: " + "  ".join(cells))
    if not cpu_decode.load():
        return
    print("# decode attention, one layer's call, thread CPU us: SDPA over a gathered copy / compiled kernel")
    for batch, context in ((32, 128), (12, 1040), (9, 1568), (1, 2000)):
        sdpa, kernel = attention_us(runner, batch, context, args.rounds)
        print(f"b={batch} x {context} keys: {sdpa:.0f} / {kernel:.0f} ({kernel / sdpa:.2f}x)")


if __name__ == "__main__":
    main()
