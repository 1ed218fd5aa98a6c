"""The whole public surface of ``flash_kernels``: three operations behind a backend chosen by name.

Layout shared by every backend (it is flash-attn's paged layout, so that backend needs no copy):

    key_cache, value_cache: (num_blocks, block_size, num_kv_heads, head_dim), dtype fp32 | fp16 | bf16
    slot s  <->  key_cache[s // block_size, s % block_size]

A request's context is the sequence of its tokens' K/V read through its row of ``block_tables``: position p of
the request lives at block ``block_tables[i, p // block_size]``, offset ``p % block_size``. Callers store the
new tokens' K/V (``store_kv``) BEFORE calling attention, so attention only ever reads the pool.

Backends: ``reference`` (pure torch, the spec), ``sdpa`` (torch's fused CPU kernels), ``triton``,
``flash-attn``, ``auto`` (fastest correct backend present on the device). They are imported lazily: importing this module never touches triton or flash-attn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch


class AttentionBackend(Protocol):
    """Contract of every backend. All tensors live on one device; no argument is modified except the caches.

    Shapes use: n = new tokens in the step, b = requests, h = query heads, hk = kv heads (h % hk == 0, grouped
    query attention), d = head dim, nb = blocks in the pool, bs = block size (1..256), mb = max blocks per request.
    """

    name: str

    def store_kv(
        self,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        slots: torch.Tensor,
    ) -> None:
        """Write K/V of new tokens into the pool, in place.

        Args:
            key_cache, value_cache: (nb, bs, hk, d), the pool.
            key, value: (n, hk, d), same dtype as the pool.
            slots: (n,) int64, ``block * bs + offset`` of each token; distinct.
        """
        ...

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
        """Causal attention of a ragged batch of new query tokens over cached prefix + new tokens.

        Request i has ``q_len = cu_seqlens_q[i+1] - cu_seqlens_q[i]`` new tokens; they are the LAST q_len
        positions of its ``seqlens_k[i]`` context positions (the first ``seqlens_k[i] - q_len`` are the cached
        prefix). Query at context position p attends to positions 0..p.

        Args:
            q: (n, h, d), n = cu_seqlens_q[-1].
            key_cache, value_cache: (nb, bs, hk, d), already holding every context position's K/V.
            block_tables: (b, mb) int32; entries past a request's last block are ignored (any valid id).
            cu_seqlens_q: (b + 1,) int32, cumulative new-token counts, starting at 0.
            seqlens_k: (b,) int32, context length per request (cached + new), >= q_len.
            max_seqlen_q, max_seqlen_k: maxima of the above (host ints, for grid sizing).
            softmax_scale: usually d ** -0.5.
        Returns:
            (n, h, d), dtype of q.
        """
        ...

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
        """One query token per request (its last context position) against all its context.

        Args:
            q: (b, h, d).
            key_cache, value_cache: (nb, bs, hk, d).
            block_tables: (b, mb) int32.
            seqlens_k: (b,) int32, context length including the query token, >= 1.
            max_seqlen_k: host int, max of seqlens_k.
            softmax_scale: usually d ** -0.5.
        Returns:
            (b, h, d), dtype of q.
        """
        ...


# name -> "module:factory"; modules are imported only when the backend is asked for.
_REGISTRY = {
    "reference": "flash_kernels.reference:ReferenceBackend",
    "sdpa": "flash_kernels.backends.sdpa:SdpaBackend",
    "triton": "flash_kernels.backends.triton_paged:TritonBackend",
    "flash-attn": "flash_kernels.backends.flash_attn:FlashAttnBackend",
}


def _load(name: str) -> AttentionBackend:
    module_name, attr = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), attr)()


def available_backends() -> list[str]:
    """Names accepted by :func:`get_backend`."""
    return [*_REGISTRY, "auto"]


def get_backend(name: str = "reference", device: str = "cpu", block_size: int | None = None) -> AttentionBackend:
    """Return the backend called ``name`` (``auto`` picks the fastest correct one for ``device``/``block_size``).

    Raises:
        ValueError: unknown name, or a backend that cannot run here (message says why).
    """
    if name == "auto":
        return _auto(device, block_size)
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {available_backends()}")
    try:
        return _load(name)
    except ImportError as err:
        raise ValueError(f"attention backend {name!r} is not available here: {err}") from err


def _auto(device: str, block_size: int | None) -> AttentionBackend:
    """CPU -> sdpa. CUDA -> the first of these that imports: flash-attn then triton when its paged
    kernels take ``block_size`` (a multiple of 256) or it is unknown; triton then flash-attn otherwise, since
    flash-attn serves smaller blocks only by copying the context out of the pool (see its module);
    reference last."""
    if not device.startswith("cuda"):
        return _load("sdpa")
    paged_flash = block_size is None or block_size % 256 == 0
    for candidate in ("flash-attn", "triton") if paged_flash else ("triton", "flash-attn"):
        try:
            return _load(candidate)
        except ImportError:
            continue
    return _load("reference")
