"""flash-attn 2 backend: its varlen and kvcache kernels, reading the pool in place where its paging allows.

Which path runs (flash-attn >= 2.6, the ``gpu`` extra):

    block size       dtype       prefill                                  decode
    multiple of 256  fp16, bf16  flash_attn_varlen_func(block_table=bt)   flash_attn_with_kvcache(..., bt)
    other (1..255)   fp16, bf16  gather contexts to packed K/V; varlen    gather rows to (b, mb*bs); kvcache
    any              fp32        the reference (flash-attn computes in 16-bit types only)

flash-attn 2 documents that a paged cache's ``page_block_size must be a multiple of 256``; smaller blocks cost
an extra copy of the context per layer here, which is why ``get_backend("auto", "cuda", block_size)`` picks
the Triton backend for them. Decode's gather uses the whole table width (no host-side lengths), so it stays
capturable in a CUDA graph. ``store_kv`` is the reference's single index-copy kernel.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from flash_kernels import reference

PAGED_BLOCK_MULTIPLE = 256


def paged_kernels_accept(block_size: int) -> bool:
    """Whether flash-attn 2 can read a pool of this block size through a block table."""
    return block_size % PAGED_BLOCK_MULTIPLE == 0


def cumulative(lengths: torch.Tensor) -> torch.Tensor:
    """(b,) lengths -> (b + 1,) int32 offsets starting at 0, on the lengths' device."""
    return torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))


def gather_packed(cache: torch.Tensor, block_tables: torch.Tensor, seqlens_k: torch.Tensor) -> torch.Tensor:
    """Every request's context, packed back to back: cache (nb, bs, hk, d), block_tables (b, mb) int32,
    seqlens_k (b,) int32 -> (sum(seqlens_k), hk, d). One host sync (the total length)."""
    block_size = cache.shape[1]
    lengths = seqlens_k.long()
    total = int(lengths.sum())
    request = torch.repeat_interleave(
        torch.arange(len(lengths), device=cache.device), lengths, output_size=total
    )
    starts = lengths.cumsum(0) - lengths
    position = torch.arange(total, device=cache.device) - starts[request]
    slots = block_tables[request, position // block_size].long() * block_size + position % block_size
    return cache.flatten(0, 1)[slots]


def gather_padded(cache: torch.Tensor, block_tables: torch.Tensor) -> torch.Tensor:
    """Each request's blocks in table order as one contiguous row: cache (nb, bs, hk, d), block_tables (b, mb)
    int32 -> (b, mb * bs, hk, d). Positions past a request's length hold whatever its table points at."""
    blocks = cache[block_tables.long()]  # (b, mb, bs, hk, d)
    return blocks.flatten(1, 2)


class FlashAttnBackend:
    """flash-attn 2 as an :class:`~flash_kernels.api.AttentionBackend` (paths in the module docstring).

    Args:
        varlen, kvcache: the two flash-attn entry points; left out, they are imported from ``flash_attn``
            (ImportError when it is not installed, which the registry reports). Tests pass torch stand-ins.
    """

    name = "flash-attn"
    store_kv = staticmethod(reference.store_kv)

    def __init__(
        self,
        varlen: Callable[..., torch.Tensor] | None = None,
        kvcache: Callable[..., torch.Tensor] | None = None,
    ) -> None:
        if varlen is None or kvcache is None:
            from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache

            varlen, kvcache = flash_attn_varlen_func, flash_attn_with_kvcache
        self._varlen = varlen
        self._kvcache = kvcache

    def prefill(
        self,
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
        """See ``AttentionBackend.prefill``. flash-attn aligns the causal mask bottom-right when q is shorter
        than k, which is exactly "new tokens are the last positions of the context"."""
        if q.dtype == torch.float32:
            return reference.prefill(
                q,
                key_cache,
                value_cache,
                block_tables,
                cu_seqlens_q,
                seqlens_k,
                max_seqlen_q,
                max_seqlen_k,
                softmax_scale,
            )
        cu_seqlens_k = cumulative(seqlens_k)
        if paged_kernels_accept(key_cache.shape[1]):
            keys, values, paged = key_cache, value_cache, {"block_table": block_tables}
        else:
            keys = gather_packed(key_cache, block_tables, seqlens_k)
            values = gather_packed(value_cache, block_tables, seqlens_k)
            paged = {}
        return self._varlen(
            q,
            keys,
            values,
            cu_seqlens_q,
            cu_seqlens_k,
            max_seqlen_q,
            max_seqlen_k,
            softmax_scale=softmax_scale,
            causal=True,
            **paged,
        )

    def decode(
        self,
        q: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        block_tables: torch.Tensor,
        seqlens_k: torch.Tensor,
        max_seqlen_k: int,
        softmax_scale: float,
    ) -> torch.Tensor:
        """See ``AttentionBackend.decode``; q (b, h, d) goes to flash-attn as (b, 1, h, d)."""
        if q.dtype == torch.float32:
            return reference.decode(
                q, key_cache, value_cache, block_tables, seqlens_k, max_seqlen_k, softmax_scale
            )
        if paged_kernels_accept(key_cache.shape[1]):
            keys, values, table = key_cache, value_cache, block_tables
        else:
            keys, values, table = (
                gather_padded(key_cache, block_tables),
                gather_padded(value_cache, block_tables),
                None,
            )
        out = self._kvcache(
            q.unsqueeze(1),
            keys,
            values,
            cache_seqlens=seqlens_k,
            block_table=table,
            softmax_scale=softmax_scale,
            causal=True,
        )
        return out.squeeze(1)
