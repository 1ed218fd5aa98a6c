"""``python -m flash_kernels.bench.tiles``: the Triton prefill kernel under other launch shapes (rows of a query
tile, keys per KV tile, warps, pipeline stages), on the benchmark's Qwen3-4B-shaped prefill with 0% and 90%
of each 4k context cached (block 16, bf16). Per shape: TFLOP/s, the fraction of the bf16 matmul peak measured
in the same run, and the largest difference of its output from the device's default shape's (the shape the
compiled test suite checks against the reference). A shape that does not compile on this device (shared memory) is
reported and skipped. ``--device cpu --tiny`` runs the code path under the Triton interpreter.
"""

from __future__ import annotations

import argparse
import os

import torch

# (rows, keys, warps, stages); for 16-bit head dim 128 triton_paged._tiles picks the first on devices with less
# than BIG_TILE_SHARED_MEMORY per block and (256, 64, 8, 3) on larger ones.
CANDIDATES = (
    (128, 64, 8, 3),
    (128, 64, 4, 3),
    (128, 64, 8, 4),
    (128, 128, 8, 2),
    (128, 128, 8, 3),
    (256, 64, 8, 2),
    (256, 64, 8, 3),
    (256, 128, 8, 2),
    (64, 64, 4, 3),
)


def _shapes(text: str) -> tuple[tuple[int, int, int, int], ...]:
    shapes = tuple(tuple(int(v) for v in part.split(",")) for part in text.split(";") if part.strip())
    if not shapes or any(len(shape) != 4 for shape in shapes):
        raise argparse.ArgumentTypeError(f"expected 'rows,keys,warps,stages;...', got {text!r}")
    return shapes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flash_kernels.bench.tiles", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke run)")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--shapes", type=_shapes, default=CANDIDATES,
                   help="launch shapes to time, 'rows,keys,warps,stages;...' (default: the built-in candidates)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # NOTE: before triton is first imported
    from flash_kernels.bench.attention import cached_prefix, paged_pool, prefill_inputs
    from flash_kernels.bench.peak import measure_peaks
    from flash_kernels.bench.shapes import QWEN3_4B, TINY
    from flash_kernels.bench.timing import time_ms
    from flash_kernels.backends import triton_paged

    shape = TINY if args.tiny else QWEN3_4B
    iters = 1 if args.tiny else args.iters
    peak = measure_peaks(device, torch.bfloat16, shape.matmul_n, shape.copy_bytes, 1, iters).matmul_tflops
    print(f"# {device} peak bf16 matmul {peak:.1f} TFLOP/s; prefill {shape.prefill_batch} x {shape.context}, "
          f"{shape.heads} q / {shape.kv_heads} kv heads, head dim {shape.head_dim}, block 16")
    print("rows keys warps stages  cached        ms     TFLOP/s  of peak  max |diff| vs default")
    pool = paged_pool(shape, shape.prefill_batch, 16, torch.bfloat16, device)
    for fraction in (0.0, 0.9):
        args_, flops = prefill_inputs(shape, pool, 16, fraction, torch.bfloat16, device)
        prefix = cached_prefix(shape.context, fraction, 16)
        default = triton_paged.prefill(*args_)
        for rows, keys, warps, stages in args.shapes:
            tiles = triton_paged.Tiles(rows=rows, num_warps=warps, num_stages=stages, keys=keys)
            label = f"{rows:4d} {keys:4d} {warps:5d} {stages:6d}  {prefix:6d}"
            try:
                diff = (triton_paged.prefill(*args_, tiles=tiles).float() - default.float()).abs().max().item()
                ms = time_ms(lambda: triton_paged.prefill(*args_, tiles=tiles), device, 1, iters)
            except Exception as err:  # NOTE: e.g. triton's OutOfResources on a device with less shared memory
                print(f"{label}  skipped: {type(err).__name__}: {str(err)[:80]}")
                continue
            rate = flops / (ms * 1e-3) / 1e12
            print(f"{label}  {ms:8.3f}  {rate:10.1f}  {rate / peak:7.1%}  {diff:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
