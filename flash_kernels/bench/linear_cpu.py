"""``python -m flash_kernels.bench.linear_cpu``: the AMX tile linears (:mod:`flash_kernels.backends.cpu_linear`)
against ``F.linear`` (oneDNN) on one decoder layer's four products (fused QKV, output, fused gate-up, down), per
layer, for a few row counts; ``--dtype fp32``: the AVX2 panel linears (:mod:`flash_kernels.backends.cpu_panels`)
against ``F.linear`` (MKL's sgemm).

``--layers N`` gives each of N layers its own weights, run one layer after another as a forward does, so that
a layer's weights come from memory (the rest of the step evicts them), not from the cache that back-to-back
calls on one weight find them in. Shapes default to the 100m demo model's (hidden 768, 12 / 4 heads of 64,
intermediate 2,688). Prints milliseconds per layer (median of the rounds) and the achieved TFLOP/s.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

from flash_kernels.backends import cpu_linear, cpu_panels

# dtype -> (ours, torch's library), ours's pack(weight) and call(x, packed, out_features)
PATHS = {
    "bf16": ("tiles", "oneDNN", cpu_linear.pack, lambda x, p, n: cpu_linear.linear(x, p, n, None)),
    "fp32": ("panels", "MKL", cpu_panels.pack, lambda x, p, n: cpu_panels.linear(x, p[0], n, p[1])),
}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
USABLE = {"bf16": cpu_linear.usable, "fp32": cpu_panels.usable}


def layer_shapes(
    hidden: int, heads: int, kv_heads: int, head_dim: int, intermediate: int
) -> list[tuple[int, int]]:
    """(out, in) of a layer's fused QKV, output, fused gate-up and down projections."""
    q, kv = heads * head_dim, kv_heads * head_dim
    return [(q + 2 * kv, hidden), (hidden, q), (2 * intermediate, hidden), (hidden, intermediate)]


def time_layers(rows: int, shapes: list[tuple[int, int]], layers: int, rounds: int, dtype: str = "bf16"
                ) -> dict[str, float]:
    """Median seconds per layer of each path over ``rounds`` passes through ``layers`` layers of random
    ``dtype`` weights, ``rows`` input rows."""
    ours, library, pack, call = PATHS[dtype]
    weights = [[torch.randn(n, k).to(DTYPES[dtype]) for n, k in shapes] for _ in range(layers)]
    packed = [[pack(w) for w in ws] for ws in weights]
    xs = [torch.randn(rows, k).to(DTYPES[dtype]) for _, k in shapes]

    def kernel() -> None:
        for ps in packed:
            for p, x, (n, _) in zip(ps, xs, shapes):
                call(x, p, n)

    def torch_linear() -> None:
        for ws in weights:
            for w, x in zip(ws, xs):
                F.linear(x, w)

    out = {}
    for name, run in ((ours, kernel), (library, torch_linear)):
        run()  # warm: oneDNN's primitive for this row count
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            run()
            times.append((time.perf_counter() - start) / layers)
        out[name] = statistics.median(times)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flash_kernels.bench.linear_cpu",
                                description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[8, 32, 64, 128, 205, 256, 384, 768])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--intermediate", type=int, default=2688)
    p.add_argument("--dtype", choices=sorted(PATHS), default="bf16")
    args = p.parse_args(argv)
    if not USABLE[args.dtype]():
        print(f"the {PATHS[args.dtype][0]} linears are unavailable here (no "
              f"{'AMX' if args.dtype == 'bf16' else 'AVX2 + FMA'}, or the kernels did not build)")
        return 2
    shapes = layer_shapes(args.hidden, args.heads, args.kv_heads, args.head_dim, args.intermediate)
    macs = sum(n * k for n, k in shapes)
    before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        for rows in args.rows:
            t = time_layers(rows, shapes, args.layers, args.rounds, args.dtype)
            cells = ", ".join(f"{name} {s * 1e3:7.3f} ms ({2 * rows * macs / s / 1e12:4.2f} TFLOP/s)"
                              for name, s in t.items())
            print(f"{args.threads} threads, {args.layers} layers, {rows:5d} rows: {cells} per layer", flush=True)
    finally:
        torch.set_num_threads(before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
