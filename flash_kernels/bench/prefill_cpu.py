"""``python -m flash_kernels.bench.prefill_cpu [--dtype fp32]``: paged prefill attention on this CPU, per call, for
the compiled kernel's forms built here (bf16: ``amx``, cpu_prefill_amx.cpp, and ``avx512``, cpu_prefill.cpp; fp32:
``avx2``, cpu_prefill_avx2.cpp) and torch's flash kernel (the SDPA backend's path with the compiled kernel off),
one layer of the peer model's shape by default (4 query heads, 2 KV heads, head dim 64; ``--heads 32 --kv-heads 8
--head-dim 128`` for an 8B-class layer), 16-token blocks in a shuffled pool.

Shapes (new tokens over cached ones): cold prompts of 2,048 and 1,551 tokens, 208 over 1,840 (the 90%-cached
prompt of ``prism-shard bench``), 50 over 1,500 (a shared-prefix hit), 8 pieces of 64 over 1,100 (a RAG step).
For each thread count the paths alternate call by call, so that load from other processes falls on all; prints
median wall times and each form's ratio to torch's. Asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from flash_kernels.backends import cpu_decode, cpu_prefill, sdpa

SHAPES = (("cold 2,048", [(0, 2048)]), ("cold 1,551", [(0, 1551)]), ("208 over 1,840", [(1840, 208)]),
          ("50 over 1,500", [(1500, 50)]), ("8 x 64 over 1,100", [(1100, 64)] * 8))
BLOCK = 16


def _case(pieces: list[tuple[int, int]], heads: int, kv_heads: int, dim: int, gen: torch.Generator,
          dtype: torch.dtype = torch.bfloat16) -> tuple:
    """(q, key_cache, value_cache, block_tables, cu_seqlens_q, seqlens_k) for (cached, new) pieces."""
    lengths = [c + n for c, n in pieces]
    width = max(-(-n // BLOCK) for n in lengths)
    pool = len(pieces) * width + 8
    caches = [torch.randn(pool, BLOCK, kv_heads, dim, generator=gen).to(dtype) for _ in range(2)]
    tables = torch.randperm(pool, generator=gen)[: len(pieces) * width].view(len(pieces), width).int()
    cu = torch.tensor([0] + [n for _, n in pieces], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    q = torch.randn(int(cu[-1]), heads, dim, generator=gen).to(dtype)
    return q, caches[0], caches[1], tables, cu, torch.tensor(lengths, dtype=torch.int32)


def _paths(case: tuple) -> dict[str, Callable[[], object]]:
    q, kc, vc, tables, cu, seqlens = case
    group, dim = q.shape[1] // kc.shape[2], q.shape[2]
    scale = dim ** -0.5
    ops = torch.ops.prism_kernels
    paths: dict[str, Callable[[], object]] = {}

    def flash() -> object:
        cpu_prefill.set_enabled(False)
        try:
            return sdpa.prefill(q, kc, vc, tables, cu, seqlens, int((cu[1:] - cu[:-1]).max()),
                                int(seqlens.max()), scale)
        finally:
            cpu_prefill.set_enabled(None)

    paths["torch flash"] = flash
    out = torch.empty_like(q)
    if q.dtype == torch.float32:
        if ops.paged_prefill_fp32_supported(group, dim):
            paths["avx2"] = lambda: ops.paged_prefill_fp32(q, kc, vc, tables, cu, seqlens, scale, out)
        return paths
    if ops.paged_prefill_amx_supported(group, dim):
        paths["amx"] = lambda: ops.paged_prefill_amx(q, kc, vc, tables, cu, seqlens, scale, out)
    if ops.paged_prefill_supported(group, dim):
        paths["avx512"] = lambda: ops.paged_prefill(q, kc, vc, tables, cu, seqlens, scale, out)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flash_kernels.bench.prefill_cpu",
                                description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--calls", type=int, default=15, help="timed calls per path, shape and thread count")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    args = p.parse_args(argv)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    if not cpu_decode.load():
        print("the compiled CPU kernels are unavailable here: nothing to compare")
        return 2
    gen = torch.Generator().manual_seed(0)
    cases = [(name, _paths(_case(pieces, args.heads, args.kv_heads, args.head_dim, gen, dtype)))
             for name, pieces in SHAPES]
    before = torch.get_num_threads()
    try:
        for threads in args.threads:
            torch.set_num_threads(threads)
            for name, paths in cases:
                for fn in paths.values():  # warm-up: JIT'd kernels, first-touch pages
                    fn()
                times: dict[str, list[float]] = {k: [] for k in paths}
                for _ in range(args.calls):
                    for key, fn in paths.items():
                        start = time.perf_counter()
                        fn()
                        times[key].append(time.perf_counter() - start)
                med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
                base = med["torch flash"]
                cells = [f"{k} {v:6.2f} ms" + ("" if k == "torch flash" else f" ({v / base:.2f}x)")
                         for k, v in med.items()]
                print(f"threads {threads}, {name:>17}: " + ", ".join(cells))
    finally:
        torch.set_num_threads(before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
