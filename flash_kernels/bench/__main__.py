"""``python -m flash_kernels.bench``: attention backends and a Qwen3-4B-sized decode step on this device.

Prints, per available backend and block size (16, 256): prefill TFLOP/s with 0/50/90% of each 4k context
cached, and decode GB/s of KV read at batch 64, each as a fraction of the peaks measured in the same run
(bf16 matmul TFLOP/s, copy GB/s) against the targets (prefill >= 50%, decode >= 60%); then the end-to-end
decode step time of a random Qwen3-4B-sized model, eager and replayed from a CUDA graph.

``--device cpu --tiny`` runs the same code on tiny shapes (reference and interpreted Triton): a smoke test
of the code path, whose numbers mean nothing.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "flash_kernels.bench: no CUDA device here. The figures need a GPU; to check the code path on "
            "this machine run `python -m flash_kernels.bench --device cpu --tiny`.",
            file=sys.stderr,
        )
        return 2
    if device.type == "cpu":
        # NOTE: must precede the first triton import (backends are imported lazily, below).
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from flash_kernels.bench.report import run

    run(args, device, DTYPES[args.dtype])
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flash_kernels.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke run)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument(
        "--backends",
        nargs="+",
        default=None,
        help="default: triton and flash-attn on CUDA, reference, sdpa and triton on CPU",
    )
    parser.add_argument("--block-sizes", nargs="+", type=int, default=[16, 256])
    parser.add_argument("--iters", type=int, default=None, help="timed calls per figure (default 20; tiny 1)")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end decode step")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
