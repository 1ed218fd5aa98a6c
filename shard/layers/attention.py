"""Paged self-attention: projections, optional per-head q/k RMSNorm (Qwen3), RoPE, then ONLY the
``flash_kernels`` backend's ``store_kv`` / ``prefill`` / ``decode`` (on a CPU the KV store is fused
into the RoPE pass: :func:`flash_kernels.backends.cpu_pointwise.rope_store_kv`, the same pool writes)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from flash_kernels.api import AttentionBackend
from flash_kernels.backends import cpu_pointwise
from shard.layers.fusion import fuse_linears
from shard.layers.rmsnorm import RMSNorm
from shard.layers.rotary import Rotary
from shard.tensor_parallel import SINGLE, TensorParallel


@dataclass(frozen=True)
class AttentionMetadata:
    """Where the step's tokens live in the paged pool; one per forward, shared by all layers.

    positions: (n,) int64 context position of each new token.
    slots: (n,) int64 pool slot each new token's K/V is written to.
    block_tables: (b, mb) int32 block ids per request (padded with a valid id).
    seqlens_k: (b,) int32 context length per request after this step's tokens.
    cu_seqlens_q: (b + 1,) int32 cumulative new-token counts; None for a decode step (one token per request).
    max_seqlen_q, max_seqlen_k: host ints (upper bounds are allowed for max_seqlen_k).
    min_seqlen_q: host int, the fewest new tokens of a request in the step (0: not known).
    """

    positions: torch.Tensor
    slots: torch.Tensor
    block_tables: torch.Tensor
    seqlens_k: torch.Tensor
    cu_seqlens_q: torch.Tensor | None
    max_seqlen_q: int
    max_seqlen_k: int
    min_seqlen_q: int = 0

    @property
    def is_decode(self) -> bool:
        return self.cu_seqlens_q is None


@dataclass(frozen=True)
class AttentionShape:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    bias: bool = False  # q/k/v biases (Qwen2; Llama/Qwen3 attention_bias)
    qk_norm_eps: float | None = None  # Qwen3 normalises q and k per head
    o_bias: bool = False  # o_proj bias (Llama/Qwen3 attention_bias)


class PagedAttention(nn.Module):
    """hidden (n, hidden) -> (n, hidden). Parameter names match HF ``self_attn.*``.

    Under tensor parallelism (``tp.world`` > 1) this rank holds heads/world query heads and kv_heads/world KV
    heads: q/k/v are column-parallel (their rows of the checkpoint), o_proj row-parallel (its columns), and
    the output is all-reduced once. ``shape`` is the whole model's; ``heads``/``kv_heads`` are this rank's.

    Raises:
        ValueError: an o_proj bias with tensor parallelism (a row-parallel bias would be summed world times).
    """

    def __init__(
        self, shape: AttentionShape, rotary: Rotary, backend: AttentionBackend, tp: TensorParallel = SINGLE
    ) -> None:
        super().__init__()
        s = shape
        if s.o_bias and tp.enabled:
            raise ValueError("tensor parallelism does not support an o_proj bias (attention_bias)")
        self.shape, self.tp = s, tp
        self.heads, self.kv_heads = s.heads // tp.world, s.kv_heads // tp.world
        self.q_proj = nn.Linear(s.hidden, self.heads * s.head_dim, bias=s.bias)
        self.k_proj = nn.Linear(s.hidden, self.kv_heads * s.head_dim, bias=s.bias)
        self.v_proj = nn.Linear(s.hidden, self.kv_heads * s.head_dim, bias=s.bias)
        self.o_proj = nn.Linear(self.heads * s.head_dim, s.hidden, bias=s.o_bias)
        if s.qk_norm_eps is not None:
            self.q_norm = RMSNorm(s.head_dim, s.qk_norm_eps)
            self.k_norm = RMSNorm(s.head_dim, s.qk_norm_eps)
        self.rotary = rotary
        self.backend = backend
        self.scale = s.head_dim**-0.5
        self.qkv_proj: nn.Linear | None = None  # set by fuse() after loading

    def fuse(self) -> None:
        """One q/k/v matmul from now on (see :mod:`shard.layers.fusion`)."""
        self.qkv_proj = fuse_linears([self.q_proj, self.k_proj, self.v_proj])

    def forward(
        self, hidden: torch.Tensor, meta: AttentionMetadata, kv: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        q = self._query_and_store(hidden, meta, kv)
        out = self._attend(q, *kv, meta)
        out = self.o_proj(out.reshape(hidden.shape[0], self.heads * self.shape.head_dim))
        return self.tp.all_reduce(out) if self.tp.enabled else out

    def _query_and_store(
        self, hidden: torch.Tensor, meta: AttentionMetadata, kv: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """hidden (n, hidden) -> q (n, h, d) after RoPE; this step's K/V (k after RoPE) written to the pool."""
        n, s = hidden.shape[0], self.shape
        h, hk, d = self.heads, self.kv_heads, s.head_dim
        key_cache, value_cache = kv
        if self.qkv_proj is not None and s.qk_norm_eps is None:
            qkv = self.qkv_proj(hidden).view(n, h + 2 * hk, d)
            if cpu_pointwise.store_usable(qkv, key_cache, value_cache):
                # on a CPU: RoPE and the store in one pass; the pool's layout is every backend's
                # (flash_kernels.api), so writing it here is what the backend's store_kv writes
                cos, sin = self.rotary.tables()
                return cpu_pointwise.rope_store_kv(
                    qkv, meta.positions, cos, sin, key_cache, value_cache, meta.slots
                )
            qk = self.rotary.rotate(meta.positions, qkv[:, : h + hk])  # q and k rotated as one: half the ops
            q, k, v = qk[:, :h], qk[:, h:], qkv[:, h + hk :]
        else:
            if self.qkv_proj is not None:
                q, k, v = self.qkv_proj(hidden).split((h * d, hk * d, hk * d), dim=-1)
            else:
                q, k, v = self.q_proj(hidden), self.k_proj(hidden), self.v_proj(hidden)
            q, k, v = q.view(n, h, d), k.view(n, hk, d), v.view(n, hk, d)
            if s.qk_norm_eps is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = self.rotary(meta.positions, q, k)
        self.backend.store_kv(key_cache, value_cache, k, v, meta.slots)
        return q

    def _attend(
        self, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, m: AttentionMetadata
    ) -> torch.Tensor:
        if m.is_decode:
            return self.backend.decode(q, kc, vc, m.block_tables, m.seqlens_k, m.max_seqlen_k, self.scale)
        return self.backend.prefill(
            q, kc, vc, m.block_tables, m.cu_seqlens_q, m.seqlens_k, m.max_seqlen_q, m.max_seqlen_k, self.scale
        )
