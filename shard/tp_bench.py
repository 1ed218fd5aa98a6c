"""Tensor parallelism on this machine's CPUs, a correctness-only datapoint: prefill and decode throughput of a
demo model on 1 rank against ``--world`` gloo ranks (each rank a process with cores / world threads),
interleaved rounds, medians and ratios. On CPUs the ranks share the cores and memory bandwidth, so TP can only
add the collectives' cost; it is not a measurement of TP on GPUs (docs/tensor-parallel.md).

    python -m shard.tp_bench [--size small] [--world 2] [--rounds 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from shard.bench import POOL_BLOCKS, BlockCounter, decode_tokens_per_s, prefill_tokens_per_s
from shard.config import ShardConfig
from shard.demo_model import build_demo_model
from shard.factory import build_runner

DECODE_BATCH, DECODE_STEPS = 8, 16


def measure(folder: str, threads: int) -> dict[str, float]:
    """This rank's run (RANK/WORLD_SIZE from the environment): prefill and decode tokens/s."""
    rank, world = ShardConfig.env_rank()
    config = ShardConfig(model_dir=folder, device="cpu", dtype="float32", attention_backend="auto",
                         num_blocks=POOL_BLOCKS, cpu_threads=threads, rank=rank, world_size=world)
    runner = build_runner(config)
    vocab, pool = runner.model.config.vocab_size, BlockCounter()
    decode_tokens_per_s(runner, random.Random(1), vocab, pool, 1, 2)  # warm up
    out = {
        "prefill": prefill_tokens_per_s(runner, random.Random(0), vocab, pool),
        "decode": decode_tokens_per_s(runner, random.Random(0), vocab, pool, DECODE_BATCH, DECODE_STEPS),
    }
    runner.model.tp.shutdown()
    return out


def run_group(folder: str, world: int, threads: int) -> dict[str, float]:
    """Start ``world`` ranks of :func:`measure` with ``threads`` each; rank 0's numbers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port}
        cmd = [sys.executable, "-m", "shard.tp_bench", "--rank-run", folder, "--threads", str(threads)]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        procs.append(subprocess.Popen(cmd, env=env, text=True, **pipes))
    outs = [p.communicate() for p in procs]
    if any(p.returncode for p in procs):
        logs = "\n".join(f"rank {r} exit {p.returncode}:\n{err[-3000:]}" for r, (p, (_, err)) in
                         enumerate(zip(procs, outs)))
        raise RuntimeError(f"a rank failed:\n{logs}")
    return json.loads(outs[0][0].strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="small")
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workdir")
    p.add_argument("--rank-run", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rank_run:
        print(json.dumps(measure(args.rank_run, args.threads)))
        return
    folder = Path(args.workdir or tempfile.mkdtemp(prefix="prism-tp-bench-")) / f"llama-{args.size}"
    if not (folder / "model.safetensors").is_file():
        build_demo_model(folder, "llama", args.size)
    cores = len(os.sched_getaffinity(0))
    share = max(1, cores // args.world)
    # (world, threads per rank): 1 rank on every core, 1 rank on one rank's share, the TP group
    setups = [(1, cores), (1, share), (args.world, share)]
    runs: dict[tuple[int, int], list[dict[str, float]]] = {s: [] for s in setups}
    for _ in range(args.rounds):
        for world, threads in setups:
            runs[(world, threads)].append(run_group(str(folder), world, threads))
    print(f"llama-{args.size}, fp32, {cores} cores; {args.rounds} interleaved rounds, medians")
    for key, unit in (("prefill", "prefill tokens/s"), ("decode", f"decode tokens/s (batch {DECODE_BATCH})")):
        base = statistics.median(r[key] for r in runs[setups[0]])
        cells = [f"TP={w} x {t} threads {statistics.median(r[key] for r in runs[(w, t)]):8.1f} "
                 f"({statistics.median(r[key] for r in runs[(w, t)]) / base:.2f}x)" for w, t in setups]
        print(f"{unit:>28}: " + "   ".join(cells))


if __name__ == "__main__":
    main()
