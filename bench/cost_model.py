"""How long one forward step of the shard takes, for the simulator.

A step runs a mixed batch, as a chunking shard does: prefill chunks, each ``(new_tokens, cached_context)``
(the tokens computed now and the tokens of that request already in KV before them), and one token for each
decoding request, given by its context length. Two kinds:

- analytic (``MODEL-GPU``, MODEL one of ``qwen3-4b``, ``llama2-7b``, ``llama2-13b``, GPU one of ``a800``,
  ``h100``, ``a6000``): FLOPs and bytes against the GPU's peak rates with stated efficiency factors, a
  roofline ``max(compute, memory)`` plus a fixed per-step overhead (kernel launches, sampling, scheduling);
- ``measured:PATH``: a linear fit of our own shard's step times (the JSON ``prism-bench calibrate`` writes).

KV capacity follows from the GPU memory: ``memory * mem_fraction - weights`` over the KV bytes of one token.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

Chunk = tuple[int, int]  # (new tokens computed in this step, tokens of the request already in KV)


def chunk_pairs(new: int, context: int) -> float:
    """(query, key) pairs of ``new`` prompt tokens computed after ``context`` ones: the i-th new token (from 1)
    attends to ``context + i`` keys."""
    return new * (context + (new + 1) / 2)


class CostModel(Protocol):
    name: str

    @property
    def kv_capacity_tokens(self) -> int:
        """Tokens of KV the GPU holds after weights: the simulator's block budget."""
        ...

    def step_seconds(self, prefill: Sequence[Chunk], decode_contexts: Sequence[int]) -> float:
        """Wall time of one forward step: the prefill chunks plus one token per decoding request
        (``decode_contexts`` are their context lengths). An empty step takes 0."""
        ...

    def work_floor(self, prefill_tokens: int, prefill_pairs: float, decodes: int, decode_context: int,
                   steps: int) -> float:
        """A lower bound on the summed ``step_seconds`` of any ``steps`` steps that together compute
        ``prefill_tokens`` prompt tokens with ``prefill_pairs`` (query, key) pairs in all, and ``decodes``
        decode tokens whose contexts sum to ``decode_context`` (:mod:`bench.floor`)."""
        ...


@dataclass(frozen=True)
class ModelSpec:
    name: str
    params: float  # total parameters (weight bytes and ~2 FLOPs per parameter per token)
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int = 2  # bf16

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def weight_bytes(self) -> float:
        return self.params * self.dtype_bytes

    @property
    def attn_flops_per_pair(self) -> float:
        """FLOPs of one (query, key) pair over all layers: QK^T and PV, 2 FLOPs per MAC each."""
        return 4.0 * self.layers * self.q_heads * self.head_dim


@dataclass(frozen=True)
class GpuSpec:
    name: str
    peak_flops: float  # dense bf16 tensor-core FLOP/s
    mem_bandwidth: float  # HBM bytes/s
    memory_bytes: float


@dataclass(frozen=True)
class Efficiency:
    """What fraction of peak real kernels reach (stated, not measured: typical of SGLang/vLLM on A100-class
    GPUs)."""

    gemm: float = 0.6  # large prefill GEMMs
    attention: float = 0.4  # flash attention over long contexts
    bandwidth: float = 0.8  # weight and KV streaming in decode
    step_overhead_s: float = 0.004  # launches, sampling, scheduling per step
    mem_fraction: float = 0.9  # share of GPU memory for weights + KV (SGLang's mem_fraction_static is ~0.88)


MODELS = {
    "qwen3-4b": ModelSpec("Qwen3-4B", 4.02e9, layers=36, q_heads=32, kv_heads=8, head_dim=128),
    "llama2-13b": ModelSpec("Llama-2-13B", 13.0e9, layers=40, q_heads=40, kv_heads=40, head_dim=128),
    "llama2-7b": ModelSpec("Llama-2-7B", 6.74e9, layers=32, q_heads=32, kv_heads=32, head_dim=128),
}
GPUS = {
    "a800": GpuSpec("A800-SXM4-80GB", 312e12, 2.039e12, 80e9),
    "h100": GpuSpec("H100-SXM5-80GB", 989e12, 3.35e12, 80e9),
    "a6000": GpuSpec("RTX-A6000-48GB", 154.8e12, 768e9, 48e9),  # PCR's testbed GPU (dense fp16 tensor peak)
}


@dataclass(frozen=True)
class AnalyticCost:
    name: str
    model: ModelSpec
    gpu: GpuSpec
    eff: Efficiency = Efficiency()

    @property
    def kv_capacity_tokens(self) -> int:
        free = self.gpu.memory_bytes * self.eff.mem_fraction - self.model.weight_bytes
        return max(0, int(free // self.model.kv_bytes_per_token))

    def step_seconds(self, prefill: Sequence[Chunk], decode_contexts: Sequence[int]) -> float:
        tokens = sum(n for n, _ in prefill) + len(decode_contexts)
        if tokens == 0:
            return 0.0
        pairs = sum(chunk_pairs(n, ctx) for n, ctx in prefill) + sum(decode_contexts)
        compute = self._compute_seconds(tokens, pairs)
        kv_tokens = sum(n + ctx for n, ctx in prefill) + sum(decode_contexts)
        moved = self.model.weight_bytes + kv_tokens * self.model.kv_bytes_per_token
        memory = moved / (self.gpu.mem_bandwidth * self.eff.bandwidth)
        return max(compute, memory) + self.eff.step_overhead_s

    def _compute_seconds(self, tokens: int, pairs: float) -> float:
        gemm = 2.0 * self.model.params * tokens / (self.gpu.peak_flops * self.eff.gemm)
        return gemm + self.model.attn_flops_per_pair * pairs / (self.gpu.peak_flops * self.eff.attention)

    def work_floor(self, prefill_tokens: int, prefill_pairs: float, decodes: int, decode_context: int,
                   steps: int) -> float:
        # compute is additive over tokens and pairs, and a step lasts at least its compute
        compute = self._compute_seconds(prefill_tokens + decodes, prefill_pairs + decode_context)
        return compute + steps * self.eff.step_overhead_s


@dataclass(frozen=True)
class MeasuredCost:
    """``t = base + prefill_token*Σnew + prefill_pair*Σnew·(ctx+new/2) + decode_seq*n_decode
    + decode_ctx*Σctx``."""

    name: str
    base_s: float
    prefill_token_s: float
    prefill_pair_s: float
    decode_seq_s: float
    decode_ctx_s: float
    kv_capacity_tokens: int  # type: ignore[misc]  # a plain field satisfies the protocol's property

    def step_seconds(self, prefill: Sequence[Chunk], decode_contexts: Sequence[int]) -> float:
        if not prefill and not decode_contexts:
            return 0.0
        return (
            self.base_s
            + self.prefill_token_s * sum(n for n, _ in prefill)
            + self.prefill_pair_s * sum(chunk_pairs(n, ctx) for n, ctx in prefill)
            + self.decode_seq_s * len(decode_contexts)
            + self.decode_ctx_s * sum(decode_contexts)
        )

    def work_floor(self, prefill_tokens: int, prefill_pairs: float, decodes: int, decode_context: int,
                   steps: int) -> float:
        # the linear form summed over the steps: a floor when base_s >= 0 (more steps cannot cost less)
        return (
            self.base_s * steps
            + self.prefill_token_s * prefill_tokens
            + self.prefill_pair_s * prefill_pairs
            + self.decode_seq_s * decodes
            + self.decode_ctx_s * decode_context
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")


def load_measured(path: str | Path) -> MeasuredCost:
    return MeasuredCost(**json.loads(Path(path).read_text(encoding="utf-8")))


ANALYTIC_NAMES = tuple(f"{m}-{g}" for m in MODELS for g in GPUS)


def make_cost_model(name: str, eff: Efficiency = Efficiency()) -> CostModel:
    """A cost model by name: one of :data:`ANALYTIC_NAMES` (``qwen3-4b-a800``, ``llama2-7b-a6000``, ...) or
    ``measured:PATH``. Raises ValueError for another name."""
    if name.startswith("measured:"):
        return load_measured(name[len("measured:") :])
    model, _, gpu = name.rpartition("-")
    if model not in MODELS or gpu not in GPUS:
        raise ValueError(f"unknown cost model {name!r}: one of {', '.join(ANALYTIC_NAMES)} or measured:PATH")
    return AnalyticCost(name, MODELS[model], GPUS[gpu], eff)
