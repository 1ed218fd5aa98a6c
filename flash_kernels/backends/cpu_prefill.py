"""The compiled bf16 prefill kernel (``cpu_prefill.cpp``, built with the decode kernel by :mod:`.cpu_decode`):
every prompt piece of a step against its paged context in one call, AVX512-BF16 dot products, rows of a
tile in vector lanes. It serves bf16 prefill on CPUs with AVX512-BF16 (head dims 64 / 128, 1 / 2 / 4 / 8
query heads per KV head); other dtypes and CPUs keep torch's flash kernel (:mod:`.sdpa`).
``PRISM_CPU_PREFILL_KERNEL=0`` (or :func:`set_enabled`) turns it off; docs/performance.md has the numbers.
"""

from __future__ import annotations

import os

import torch

from flash_kernels.backends import cpu_decode

ENV = "PRISM_CPU_PREFILL_KERNEL"
_state: dict[object, bool] = {}  # (group, head dim) -> compiled for it; "off": set_enabled(False)


def set_enabled(on: bool) -> None:
    """Use the kernel (where it applies) or torch's flash kernel from now on, in this process: for A/B runs."""
    _state["off"] = not on


def usable(q: torch.Tensor, key_cache: torch.Tensor) -> bool:
    """Whether :func:`prefill` takes these q (n, h, d) / key_cache (nb, bs, hk, d): bf16 on a CPU, the
    extension built with its AVX512-BF16 path for this group and head dim, not switched off."""
    if q.dtype != torch.bfloat16 or q.device.type != "cpu" or _state.get("off", False):
        return False
    if os.environ.get(ENV, "1") == "0" or not cpu_decode.load():
        return False
    shape = (q.shape[1] // key_cache.shape[2], q.shape[2])
    if shape not in _state:
        _state[shape] = bool(torch.ops.prism_kernels.paged_prefill_supported(*shape))
    return _state[shape]


def prefill(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seqlens_k: torch.Tensor,
    softmax_scale: float,
) -> torch.Tensor:
    """``AttentionBackend.prefill`` on the compiled kernel (check :func:`usable` first): q (n, h, d) bf16 ->
    (n, h, d); caches (nb, bs, hk, d) contiguous; block_tables (b, mb), cu_seqlens_q (b + 1,), seqlens_k (b,)
    (any int dtype). Query j of request i sits at context position seqlens_k[i] - q_len_i + j (causal,
    aligned bottom-right)."""
    q = q.contiguous()
    out = torch.empty_like(q)
    torch.ops.prism_kernels.paged_prefill(
        q, key_cache, value_cache, block_tables.to(torch.int32), cu_seqlens_q.to(torch.int32),
        seqlens_k.to(torch.int32), softmax_scale, out,
    )
    return out
