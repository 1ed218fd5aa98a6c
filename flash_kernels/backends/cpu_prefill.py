"""The compiled bf16 prefill kernels (built with the decode kernel by :mod:`.cpu_decode`): every prompt piece of
a step against its paged context in one call, rows of a tile in vector lanes. Two forms of one contract:

    form     source                  serves (bf16; head dims 64 / 128; 1 to 8 query heads per KV head)
    amx      cpu_prefill_amx.cpp     CPUs with AMX tiles: both products on tiles, the softmax in AVX512
    avx512   cpu_prefill.cpp         CPUs with AVX512-BF16 and no AMX: vdpbf16ps dot products

Each beats torch's flash kernel on its CPU on the shapes measured (docs/performance.md: the peer model's, 1B- and
8B-class layers); other dtypes and CPUs keep torch's (:mod:`.sdpa`). ``PRISM_CPU_PREFILL_KERNEL``: ``auto``
(default: the CPU's form), ``avx512`` (that form on AMX CPUs too, for A/B runs), ``0`` (torch's flash kernel);
:func:`set_enabled` switches in-process.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch

from flash_kernels.backends import cpu_decode

ENV = "PRISM_CPU_PREFILL_KERNEL"
_forms: dict[tuple[str, int, int], str | None] = {}  # (setting, group, head dim) -> the form compiled for it
_forced: bool | None = None  # set_enabled's choice; None: the default


def set_enabled(on: bool | None) -> None:
    """From now on, in this process: True uses the kernel (the CPU's form) wherever it applies, False never, None
    goes back to the environment's setting. For A/B runs and tests."""
    global _forced
    _forced = on


@lru_cache(maxsize=1)
def amx_tiles() -> bool:
    """Whether torch sees usable AMX tiles (CPU and OS)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe()) if probe is not None else False


def _setting() -> str:
    if _forced is not None:
        return "auto" if _forced else "0"
    return os.environ.get(ENV, "auto")


def form(group: int, head_dim: int) -> str | None:
    """``"amx"``, ``"avx512"`` or None (torch's flash kernel): the form that serves bf16 prefill of this query
    group and head dim here, by the setting, the CPU and what the extension was built with."""
    setting = _setting()
    key = (setting, group, head_dim)
    if key not in _forms:
        _forms[key] = _pick(setting, group, head_dim)
    return _forms[key]


def _pick(setting: str, group: int, head_dim: int) -> str | None:
    if setting == "0" or not cpu_decode.load():
        return None
    ops = torch.ops.prism_kernels
    if setting != "avx512" and amx_tiles() and ops.paged_prefill_amx_supported(group, head_dim):
        return "amx"
    return "avx512" if ops.paged_prefill_supported(group, head_dim) else None


def usable(q: torch.Tensor, key_cache: torch.Tensor) -> bool:
    """Whether :func:`prefill` takes these q (n, h, d) / key_cache (nb, bs, hk, d): bf16 on a CPU, a form of
    the kernel for this group and head dim (:func:`form`)."""
    if q.dtype != torch.bfloat16 or q.device.type != "cpu" or not cpu_decode.load():
        return False
    return form(q.shape[1] // key_cache.shape[2], q.shape[2]) is not None


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
    op = torch.ops.prism_kernels.paged_prefill
    if form(q.shape[1] // key_cache.shape[2], q.shape[2]) == "amx":
        op = torch.ops.prism_kernels.paged_prefill_amx
    op(q, key_cache, value_cache, block_tables.to(torch.int32), cu_seqlens_q.to(torch.int32),
       seqlens_k.to(torch.int32), softmax_scale, out)
    return out
