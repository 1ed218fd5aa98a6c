"""Benchmark shapes: Qwen3-4B's attention and layer sizes, and a tiny set for the CPU smoke run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchShape:
    """heads / kv_heads / head_dim: attention; context: tokens per request; prefill_batch / decode_batch:
    requests per step; layers / hidden / intermediate / vocab: the stand-in model; e2e_context: context of
    each request in the end-to-end decode step (smaller than ``context`` to bound its KV pool)."""

    heads: int
    kv_heads: int
    head_dim: int
    context: int
    prefill_batch: int
    decode_batch: int
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    e2e_context: int
    matmul_n: int
    copy_bytes: int


# NOTE: 4 prefill requests so that even the 90%-cached case (410 new tokens each) fills an H100's 132 SMs.
QWEN3_4B = BenchShape(
    heads=32,
    kv_heads=8,
    head_dim=128,
    context=4096,
    prefill_batch=4,
    decode_batch=64,
    layers=36,
    hidden=2560,
    intermediate=9728,
    vocab=151936,
    e2e_context=1024,
    matmul_n=8192,
    copy_bytes=1 << 30,
)
# NOTE: the tiny context still spans two 256-token blocks, so both block sizes see a cached prefix.
TINY = BenchShape(
    heads=4,
    kv_heads=1,
    head_dim=64,
    context=512,
    prefill_batch=1,
    decode_batch=2,
    layers=2,
    hidden=128,
    intermediate=256,
    vocab=512,
    e2e_context=32,
    matmul_n=256,
    copy_bytes=1 << 22,
)
