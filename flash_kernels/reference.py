"""Pure-torch reference of every :mod:`flash_kernels.api` operation: the spec the fast backends are tested
against. It gathers each request's context through its block table into contiguous tensors and runs plain
softmax attention in fp32. Runs on any device; slow but simple."""

from __future__ import annotations

import torch


def store_kv(
    key_cache: torch.Tensor, value_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slots: torch.Tensor
) -> None:
    """See ``AttentionBackend.store_kv``."""
    num_blocks, block_size, heads, dim = key_cache.shape
    key_cache.view(num_blocks * block_size, heads, dim)[slots] = key
    value_cache.view(num_blocks * block_size, heads, dim)[slots] = value


def gather_context(cache: torch.Tensor, block_row: torch.Tensor, length: int) -> torch.Tensor:
    """K or V of one request's first ``length`` positions: (length, hk, d)."""
    block_size = cache.shape[1]
    n_blocks = (length + block_size - 1) // block_size
    blocks = cache[block_row[:n_blocks].long()]  # (n_blocks, bs, hk, d)
    return blocks.reshape(-1, *cache.shape[2:])[:length]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_start: int, scale: float) -> torch.Tensor:
    """Causal attention of queries at positions q_start.. over k/v at 0..: q (m, h, d), k/v (L, hk, d)."""
    heads, kv_heads = q.shape[1], k.shape[1]
    k = k.repeat_interleave(heads // kv_heads, dim=1).float()
    v = v.repeat_interleave(heads // kv_heads, dim=1).float()
    scores = torch.einsum("mhd,lhd->hml", q.float(), k) * scale
    q_pos = torch.arange(q_start, q_start + q.shape[0], device=q.device)[:, None]
    k_pos = torch.arange(k.shape[0], device=q.device)[None, :]
    scores = scores.masked_fill(k_pos > q_pos, float("-inf"))
    out = torch.einsum("hml,lhd->mhd", scores.softmax(dim=-1), v)
    return out.to(q.dtype)


def prefill(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float,
) -> torch.Tensor:
    """See ``AttentionBackend.prefill``."""
    out = torch.empty_like(q)
    cu = cu_seqlens_q.tolist()
    for i, length in enumerate(seqlens_k.tolist()):
        start, end = cu[i], cu[i + 1]
        if end == start:
            continue
        k = gather_context(key_cache, block_tables[i], length)
        v = gather_context(value_cache, block_tables[i], length)
        out[start:end] = attend(q[start:end], k, v, length - (end - start), softmax_scale)
    return out


def decode(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seqlens_k: torch.Tensor,
    max_seqlen_k: int,
    softmax_scale: float,
) -> torch.Tensor:
    """See ``AttentionBackend.decode``."""
    batch = q.shape[0]
    cu = torch.arange(batch + 1, dtype=torch.int32, device=q.device)
    return prefill(q, key_cache, value_cache, block_tables, cu, seqlens_k, 1, max_seqlen_k, softmax_scale)


class ReferenceBackend:
    """The reference as an :class:`~flash_kernels.api.AttentionBackend`."""

    name = "reference"
    store_kv = staticmethod(store_kv)
    prefill = staticmethod(prefill)
    decode = staticmethod(decode)
