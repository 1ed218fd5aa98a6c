"""``python -m flash_kernels.bench.decode_cpu``: the compiled CPU paged decode kernel alone
(``torch.ops.prism_kernels.paged_decode``), thread CPU time per call on one torch thread, over a few shapes.

``--against REV`` also builds ``cpu_decode.cpp`` as it was at git revision REV, under another op namespace in
a scratch build folder, and times the two interleaved (A, B, A, B ...) so that load from other processes
falls on both; the ratio is this tree's time over REV's. Blocks are handed out in a random order (requests'
blocks are not adjacent), contexts vary +-15% around the shape's length, K/V hold random values.

``--evict MB`` writes a buffer of MB between calls (not timed), so that K/V come from memory as they do
inside a decode step (whose weights and other layers evict them): back to back, the calls find K/V in cache
and time the arithmetic rather than the memory traffic that dominates in a step.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from flash_kernels.backends import cpu_decode

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Shape:
    """batch requests of ~context keys; kv_heads KV heads of group query heads each; block keys per block."""

    batch: int
    context: int
    kv_heads: int
    group: int
    head_dim: int
    dtype: str = "bf16"
    block: int = 16

    def label(self) -> str:
        return (f"{self.batch} x {self.context}, hk {self.kv_heads}, G {self.group}, d {self.head_dim}, "
                f"{self.dtype}, block {self.block}")


SHAPES = (
    Shape(32, 170, 2, 2, 64),  # the peer model's 32-client decode
    Shape(32, 170, 2, 1, 64),
    Shape(32, 170, 1, 8, 64),
    Shape(32, 170, 8, 4, 128),  # Llama-3-8B's heads
    Shape(8, 1040, 2, 2, 64),  # RAG contexts
    Shape(32, 2000, 2, 4, 128),
    Shape(4, 2000, 1, 8, 128),
    Shape(32, 170, 2, 2, 64, block=256),
    Shape(32, 170, 2, 2, 64, dtype="fp32"),
)


def make_args(shape: Shape, seed: int = 0) -> tuple:
    """The op's arguments for ``shape``: q, key_cache, value_cache, block_tables, seqlens_k, scale, out."""
    gen = torch.Generator().manual_seed(seed)
    low, high = max(1, int(shape.context * 0.85)), int(shape.context * 1.15) + 1
    lengths = torch.randint(low, high, (shape.batch,), generator=gen, dtype=torch.int32)
    needed = (lengths + shape.block - 1) // shape.block
    width = int(needed.max())
    num_blocks = int(needed.sum()) + 1
    order = torch.randperm(num_blocks, generator=gen, dtype=torch.int32)
    tables = torch.zeros(shape.batch, width, dtype=torch.int32)
    used = 0
    for i, n in enumerate(needed.tolist()):
        tables[i, :n] = order[used : used + n]
        used += n
    dtype = DTYPES[shape.dtype]
    cache = (num_blocks, shape.block, shape.kv_heads, shape.head_dim)
    kc = torch.randn(cache, generator=gen).to(dtype)
    vc = torch.randn(cache, generator=gen).to(dtype)
    q = torch.randn(shape.batch, shape.kv_heads * shape.group, shape.head_dim, generator=gen).to(dtype)
    return q, kc, vc, tables, lengths, shape.head_dim**-0.5, torch.empty_like(q)


def build_baseline(rev: str) -> Callable:
    """paged_decode as ``cpu_decode.cpp`` was at ``rev``, built alone under the op namespace
    prism_kernels_base."""
    from torch.utils.cpp_extension import load as build

    git = ["git", "-C", str(Path(__file__).parent)]
    sha = subprocess.check_output([*git, "rev-parse", rev], text=True).strip()[:10]
    text = subprocess.check_output([*git, "show", f"{sha}:flash_kernels/backends/cpu_decode.cpp"], text=True)
    folder = Path(tempfile.gettempdir()) / f"prism-decode-base-{sha}"  # reused by later runs against sha
    folder.mkdir(exist_ok=True)
    source = folder / "cpu_decode_base.cpp"
    source.write_text(text.replace("prism_kernels", "prism_kernels_base"))
    for header in cpu_decode.HEADERS:  # NOTE: the revision's own, where it had them (cpu_simd.h is newer)
        path = f"{sha}:flash_kernels/backends/{header.name}"
        shown = subprocess.run([*git, "show", path], capture_output=True, text=True)
        if shown.returncode == 0:
            (folder / header.name).write_text(shown.stdout)
    build(name=f"prism_paged_decode_base_{sha}", sources=[str(source)], build_directory=str(folder),
          extra_cflags=list(cpu_decode.CFLAGS), extra_ldflags=["-fopenmp"], is_python_module=False)
    return torch.ops.prism_kernels_base.paged_decode


def per_call_us(fn: Callable, args: tuple, calls: int, sweep: torch.Tensor | None = None) -> float:
    """Thread CPU microseconds per call over ``calls`` calls; with ``sweep``, that buffer written before
    each."""
    if sweep is None:
        start = time.thread_time_ns()
        for _ in range(calls):
            fn(*args)
        return (time.thread_time_ns() - start) / calls / 1e3
    total = 0
    for _ in range(calls):
        sweep.add_(1.0)
        start = time.thread_time_ns()
        fn(*args)
        total += time.thread_time_ns() - start
    return total / calls / 1e3


def run(shape: Shape, kernels: dict[str, Callable], rounds: int, budget_ms: float,
        sweep: torch.Tensor | None) -> dict[str, float]:
    """Median per-call microseconds of each kernel, interleaved over ``rounds`` rounds of ~budget_ms each."""
    args = make_args(shape)
    probe = per_call_us(next(iter(kernels.values())), args, 2, sweep)
    calls = max(1, int(budget_ms * 1e3 / max(probe, 1.0)))
    times: dict[str, list[float]] = {name: [] for name in kernels}
    for fn in kernels.values():
        per_call_us(fn, args, 2)  # warm
    for _ in range(rounds):
        for name, fn in kernels.items():
            times[name].append(per_call_us(fn, args, calls, sweep))
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flash_kernels.bench.decode_cpu",
                                description=__doc__.split("\n")[0])
    p.add_argument("--against", metavar="REV", help="also time cpu_decode.cpp as of this git revision")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--budget-ms", type=float, default=40.0, help="thread time per kernel per round and shape")
    p.add_argument("--shapes", type=int, nargs="+", help="indices into SHAPES (default: all)")
    p.add_argument("--evict", type=int, default=0, metavar="MB", help="MB written between calls (default 0)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if not cpu_decode.load():
        print("flash_kernels.bench.decode_cpu: the compiled kernel did not build here (see the log)")
        return 2
    kernels = {"head": torch.ops.prism_kernels.paged_decode}
    if args.against:
        kernels = {args.against: build_baseline(args.against), **kernels}
    chosen = [SHAPES[i] for i in args.shapes] if args.shapes else list(SHAPES)
    sweep = torch.ones(args.evict << 18) if args.evict else None  # fp32: MB << 18 elements
    print(f"# thread CPU us per call, median of {args.rounds} interleaved rounds; {args.evict} MB written "
          f"between calls; torch {torch.__version__}")
    for shape in chosen:
        us = run(shape, kernels, args.rounds, args.budget_ms, sweep)
        cells = " | ".join(f"{name} {t:8.1f}" for name, t in us.items())
        ratio = f" | head / {args.against} {us['head'] / us[args.against]:.2f}x" if args.against else ""
        print(f"{shape.label():48s} | {cells}{ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
