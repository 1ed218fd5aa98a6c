"""Runs every measurement of ``python -m flash_kernels.bench`` and prints one table (see ``__main__``)."""

from __future__ import annotations

import argparse

import torch

from flash_kernels.api import AttentionBackend, get_backend
from flash_kernels.bench.attention import bench_decode, bench_prefill, cached_prefix
from flash_kernels.bench.peak import Peaks, measure_peaks
from flash_kernels.bench.shapes import QWEN3_4B, TINY, BenchShape
from flash_kernels.bench.stand_in_model import StandInDecoder, decode_inputs, time_decode_step

PREFILL_TARGET, DECODE_TARGET = 0.50, 0.60
CACHED_FRACTIONS = (0.0, 0.5, 0.9)
ROW = "{:<11} {:>5}  {:<24} {:>10}  {:>18}  {:>7}  {}"


def run(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
    shape = TINY if args.tiny else QWEN3_4B
    iters = args.iters or (1 if args.tiny else 20)
    warmup = 1 if args.tiny else 5
    backends = _backends(args.backends, device)
    peaks = measure_peaks(device, dtype, shape.matmul_n, shape.copy_bytes, warmup, iters)
    _print_header(device, dtype, shape, peaks, iters)
    print(ROW.format("backend", "block", "measure", "ms", "rate", "of peak", "target"))
    for name, backend in backends:
        for block_size in args.block_sizes:
            _attention_rows(name, backend, shape, block_size, dtype, device, peaks, warmup, iters, args.tiny)
    if not args.no_e2e:
        for name, backend in backends:
            _e2e_row(name, backend, shape, args.block_sizes[0], dtype, device, warmup, iters)


def _backends(names: list[str] | None, device: torch.device) -> list[tuple[str, AttentionBackend]]:
    """Requested (or default) backends that load here; the others are reported and left out."""
    wanted = names or (["triton", "flash-attn"] if device.type == "cuda" else ["reference", "sdpa", "triton"])
    loaded = []
    for name in wanted:
        try:
            loaded.append((name, get_backend(name, device=str(device))))
        except ValueError as err:
            print(f"# skipped: {err}")
    return loaded


def _print_header(
    device: torch.device, dtype: torch.dtype, shape: BenchShape, peaks: Peaks, iters: int
) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# device: {name} ({device}); dtype {dtype}; torch {torch.__version__}; {iters} timed calls each")
    print(
        f"# peak: matmul {peaks.matmul_n}^3 = {peaks.matmul_tflops:.4g} TFLOP/s; "
        f"copy {peaks.copy_bytes / 2**20:.0f} MiB = {peaks.copy_gbps:.4g} GB/s (read + write)"
    )
    print(
        f"# attention: {shape.heads} q heads, {shape.kv_heads} kv heads, head dim {shape.head_dim}, "
        f"context {shape.context}; prefill batch {shape.prefill_batch}; decode batch {shape.decode_batch}"
    )


def _attention_rows(
    name: str,
    backend: AttentionBackend,
    shape: BenchShape,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    peaks: Peaks,
    warmup: int,
    iters: int,
    tiny: bool,
) -> None:
    for fraction in CACHED_FRACTIONS:
        result = bench_prefill(backend, shape, block_size, fraction, dtype, device, warmup, iters)
        cached = cached_prefix(shape.context, fraction, block_size)
        share = result.rate / peaks.matmul_tflops
        print(
            ROW.format(
                name,
                block_size,
                f"prefill {cached}/{shape.context} cached",
                f"{result.ms:.3f}",
                f"{result.rate:.4g} TFLOP/s",
                f"{share:.1%}",
                _verdict(share, PREFILL_TARGET, tiny),
            )
        )
    result = bench_decode(backend, shape, block_size, dtype, device, warmup, iters)
    share = result.rate / peaks.copy_gbps
    print(
        ROW.format(
            name,
            block_size,
            f"decode batch {shape.decode_batch}",
            f"{result.ms:.3f}",
            f"{result.rate:.4g} GB/s",
            f"{share:.1%}",
            _verdict(share, DECODE_TARGET, tiny),
        )
    )


def _e2e_row(
    name: str,
    backend: AttentionBackend,
    shape: BenchShape,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    warmup: int,
    iters: int,
) -> None:
    model = StandInDecoder(shape, backend, block_size, dtype, device)
    eager, graph = time_decode_step(model, decode_inputs(shape, block_size, device), device, warmup, iters)
    replay = f"{graph:.3f} ms" if graph is not None else "n/a (needs CUDA)"
    print(
        f"# e2e decode step, {name}, block {block_size}: {shape.layers} layers, batch {shape.decode_batch}, "
        f"context {shape.e2e_context}: eager {eager:.3f} ms, CUDA graph {replay}"
    )
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _verdict(share: float, target: float, tiny: bool) -> str:
    """Whether a figure meets its target; tiny shapes judge nothing (they only exercise the code)."""
    if tiny:
        return f">= {target:.0%}: not judged (tiny)"
    return f">= {target:.0%}: {'met' if share >= target else 'NOT met'}"
