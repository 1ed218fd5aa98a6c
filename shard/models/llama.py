"""Llama family (Llama 2/3, Mistral) decoder over flat token batches and a paged KV pool.

Qwen2/Qwen3 reuse this decoder with per-architecture options (see :mod:`shard.models.qwen3`). Parameter names
match HF checkpoints, so loading is ``load_state_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from flash_kernels.api import AttentionBackend
from shard.layers import cpu_direct
from shard.layers.attention import AttentionMetadata, AttentionShape, PagedAttention
from shard.layers.mlp import GatedMLP
from shard.layers.rmsnorm import RMSNorm
from shard.layers.rotary import Rotary, rope_type
from shard.layers.vocab_parallel import VocabParallelEmbedding, gather_logits
from shard.tensor_parallel import SINGLE, TensorParallel, check_divisible


@dataclass(frozen=True)
class DecoderConfig:
    """The HF config.json values the decoder needs (see :meth:`from_hf`)."""

    vocab_size: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    rms_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_positions: int
    tie_embeddings: bool
    attention_bias: bool = False  # q/k/v biases
    o_bias: bool = False  # o_proj bias (Llama's and Qwen3's attention_bias; Qwen2 has none)
    mlp_bias: bool = False  # Llama's mlp_bias: gate/up/down biases
    qk_norm: bool = False

    @classmethod
    def from_hf(cls, cfg: dict, **overrides: object) -> DecoderConfig:
        """Raises:
            ValueError: a config.json feature the decoder does not implement (the message names the field).
        """
        check_supported(cfg)
        heads = cfg["num_attention_heads"]
        scaling = _rope_scaling(cfg)
        values = dict(
            vocab_size=cfg["vocab_size"],
            hidden=cfg["hidden_size"],
            intermediate=cfg["intermediate_size"],
            layers=cfg["num_hidden_layers"],
            heads=heads,
            kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=cfg.get("rope_theta", 10000.0),
            rope_scaling=scaling,
            max_positions=_usable_positions(cfg, scaling or {}),
            tie_embeddings=cfg.get("tie_word_embeddings", False),
            attention_bias=cfg.get("attention_bias", False),
            o_bias=cfg.get("attention_bias", False),
            mlp_bias=cfg.get("mlp_bias", False),
        )
        values.update(overrides)
        return cls(**values)


def check_supported(cfg: dict) -> None:
    """Refuse config.json values that would change the outputs but that this decoder does not implement
    (rope_scaling types are checked by :func:`shard.layers.rotary.rope_parameters`).

    Raises:
        ValueError: the message names the field and its value.
    """
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"unsupported hidden_act {act!r} in config.json; supported: silu")
    quant = cfg.get("quantization_config")
    if quant:
        method = quant.get("quant_method", "?") if isinstance(quant, dict) else quant
        raise ValueError(f"unsupported quantization_config (quant_method {method!r}): quantized checkpoints "
                         "are not supported; serve the unquantized weights")


def _rope_scaling(cfg: dict) -> dict | None:
    """config.json's rope_scaling; a yarn one's original context, when absent, is max_position_embeddings
    (as transformers reads it)."""
    scaling = cfg.get("rope_scaling")
    if scaling and rope_type(scaling) == "yarn" and not scaling.get("original_max_position_embeddings"):
        return {**scaling, "original_max_position_embeddings": cfg.get("max_position_embeddings", 4096)}
    return scaling


def _usable_positions(cfg: dict, scaling: dict) -> int:
    """max_position_embeddings, extended by the factor of a linear or yarn ``scaling`` (:func:`_rope_scaling`;
    yarn: the original context times it, as vLLM derives its max_model_len; llama3 configs already give the
    extended one; dynamic: not extended, see :func:`shard.layers.rotary.rope_parameters`), capped at a sliding
    window when one is active (Mistral v0.1).

    NOTE: attention here is full, not windowed; within the window the two are identical, so capping the
    positions (Warmup then offers max_total_tokens <= window) keeps outputs exact instead of silently wrong.
    """
    positions = cfg.get("max_position_embeddings", 4096)
    if rope_type(scaling) == "linear":
        positions = int(positions * scaling["factor"])
    elif rope_type(scaling) == "yarn":
        positions = int(scaling["original_max_position_embeddings"] * scaling["factor"])
    window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
    return min(positions, window) if window else positions


class DecoderLayer(nn.Module):
    def __init__(
        self, c: DecoderConfig, rotary: Rotary, backend: AttentionBackend, tp: TensorParallel = SINGLE
    ) -> None:
        super().__init__()
        qk_norm_eps = c.rms_eps if c.qk_norm else None
        shape = AttentionShape(c.hidden, c.heads, c.kv_heads, c.head_dim, c.attention_bias, qk_norm_eps, c.o_bias)
        self.self_attn = PagedAttention(shape, rotary, backend, tp)
        self.mlp = GatedMLP(c.hidden, c.intermediate, c.mlp_bias, tp)
        self.input_layernorm = RMSNorm(c.hidden, c.rms_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden, c.rms_eps)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        meta: AttentionMetadata,
        kv: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """HF's ``h = r + attn(norm(r)); h + mlp(norm(h))`` with the residual stream carried in two parts, so
        that each add goes into the norm after it (:meth:`RMSNorm.add_norm`, one pass on bf16 CPUs): x (n,
        hidden) the previous layer's MLP output (the embeddings for the first layer, with ``residual`` None),
        residual (n, hidden) the stream before it -> (this layer's MLP output, the stream before it); their sum
        is the HF layer's output. ``residual`` may be updated in place."""
        if residual is None:
            h, residual = self.input_layernorm(x), x
        else:
            h, residual = self.input_layernorm.add_norm(x, residual)
        h = self.self_attn(h, meta, kv)
        h, residual = self.post_attention_layernorm.add_norm(h, residual)
        return self.mlp(h), residual


class DecoderModel(nn.Module):
    """HF ``model.*``: embeddings, layers, final norm."""

    def __init__(self, c: DecoderConfig, backend: AttentionBackend, tp: TensorParallel = SINGLE) -> None:
        super().__init__()
        rotary = Rotary(c.head_dim, c.max_positions, c.rope_theta, c.rope_scaling)
        if tp.enabled:
            self.embed_tokens = VocabParallelEmbedding(c.vocab_size, c.hidden, tp)
        else:
            self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden)
        self.layers = nn.ModuleList(DecoderLayer(c, rotary, backend, tp) for _ in range(c.layers))
        self.norm = RMSNorm(c.hidden, c.rms_eps)


class LlamaForCausalLM(nn.Module):
    """Causal LM over a flat batch of new tokens.

    ``forward(input_ids (n,) int64, meta, kv_caches) -> hidden (n, hidden)``; ``logits(hidden (m, hidden))
    -> (m, vocab) fp32``. ``kv_caches[i]`` is layer i's (key_cache, value_cache), each (nb, bs, hk, d).
    The model never knows whether it runs eagerly or under a CUDA graph.

    With ``tp`` of world > 1 this rank holds its part of every split tensor (:mod:`shard.tensor_parallel`);
    ``config`` stays the whole model's, ``kv_caches`` hold this rank's kv_heads / world heads, and ``logits``
    returns the whole vocabulary on every rank.

    Raises:
        ValueError: attention heads, KV heads or the intermediate size do not divide by ``tp.world``.
    """

    def __init__(self, config: DecoderConfig, backend: AttentionBackend, tp: TensorParallel = SINGLE) -> None:
        super().__init__()
        if tp.enabled:
            check_divisible(config.heads, config.kv_heads, config.intermediate, tp.world)
        self.config, self.tp = config, tp
        self.model = DecoderModel(config, backend, tp)
        self.direct_layers: list[cpu_direct.DirectLayer] | None = None  # cpu_direct.attach, after loading
        self.lm_head = nn.Linear(config.hidden, tp.vocab_part(config.vocab_size), bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @classmethod
    def from_hf_config(
        cls, cfg: dict, backend: AttentionBackend, tp: TensorParallel = SINGLE
    ) -> LlamaForCausalLM:
        return cls(DecoderConfig.from_hf(cfg), backend, tp)

    def forward(
        self,
        input_ids: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        # NOTE: the embeddings become the residual stream, which the layers update in place (a new tensor here)
        x, residual = self.model.embed_tokens(input_ids), None
        attend = cpu_direct.step_attention(self, x, meta)
        if attend is not None:  # on a CPU: the same kernels without the modules' per-call checks
            for direct, kv in zip(self.direct_layers, kv_caches):
                x, residual = direct(x, residual, meta, kv, attend)
        else:
            for layer, kv in zip(self.model.layers, kv_caches):
                x, residual = layer(x, residual, meta, kv)
        if residual is None:  # no layers
            return self.model.norm(x)
        return self.model.norm.add_norm(x, residual)[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.tp.enabled:
            return gather_logits(self.lm_head(hidden), self.config.vocab_size, self.tp)
        return self.lm_head(hidden).float()
