"""Qwen2 and Qwen3: the Llama decoder with Qwen's differences.

Qwen2 adds biases to q/k/v projections (always; not o_proj); Qwen3 RMS-normalises q and k per head before
RoPE and has q/k/v/o biases only with ``attention_bias``, as Llama. Neither has MLP biases (HF ignores
``mlp_bias``).
"""

from __future__ import annotations

from flash_kernels.api import AttentionBackend
from shard.models.llama import DecoderConfig, LlamaForCausalLM
from shard.tensor_parallel import SINGLE, TensorParallel


class Qwen2ForCausalLM(LlamaForCausalLM):
    @classmethod
    def from_hf_config(
        cls, cfg: dict, backend: AttentionBackend, tp: TensorParallel = SINGLE
    ) -> Qwen2ForCausalLM:
        return cls(DecoderConfig.from_hf(cfg, attention_bias=True, o_bias=False, mlp_bias=False), backend, tp)


class Qwen3ForCausalLM(LlamaForCausalLM):
    @classmethod
    def from_hf_config(
        cls, cfg: dict, backend: AttentionBackend, tp: TensorParallel = SINGLE
    ) -> Qwen3ForCausalLM:
        return cls(DecoderConfig.from_hf(cfg, qk_norm=True, mlp_bias=False), backend, tp)
