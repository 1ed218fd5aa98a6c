"""The compiled prefill kernels (built with the decode kernel by :mod:`.cpu_decode`): every prompt piece of a
step against its paged context in one call, rows of a tile in vector lanes. Three forms of one contract (head
dims 64 / 128; 1 to 8 query heads per KV head):

    form     source                  serves
    amx      cpu_prefill_amx.cpp     bf16 on CPUs with AMX tiles: both products on tiles, the softmax in AVX512
    avx512   cpu_prefill.cpp         bf16 on CPUs with AVX512-BF16 and no AMX: vdpbf16ps dot products
    avx2     cpu_prefill_avx2.cpp    fp32 on CPUs with AVX2 and FMA: fp32 FMAs, bit-identical however a prompt
                                     is split into pieces or cached

Each beats torch's flash kernel on its CPU on the shapes measured (docs/performance.md: the peer model's, 1B- and
8B-class layers); other dtypes and CPUs keep torch's (:mod:`.sdpa`), fp32 on AVX512 CPUs too (where torch's
kernels are twice as wide: unmeasured). ``PRISM_CPU_PREFILL_KERNEL``: ``auto`` (default: the CPU's form),
``avx512`` (that form for bf16 on AMX CPUs too, for A/B runs), ``avx2`` (the fp32 form on any CPU it builds on),
``0`` (torch's flash kernel); :func:`set_enabled` switches in-process.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch

from flash_kernels.backends import cpu_decode

ENV = "PRISM_CPU_PREFILL_KERNEL"
_forms: dict[tuple[str, int, int, torch.dtype], str | None] = {}  # (setting, group, head dim, dtype) -> form
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


def form(group: int, head_dim: int, dtype: torch.dtype = torch.bfloat16) -> str | None:
    """``"amx"``, ``"avx512"``, ``"avx2"`` or None (torch's flash kernel): the form that serves prefill of this
    query group, head dim and dtype here, by the setting, the CPU and what the extension was built with."""
    setting = _setting()
    key = (setting, group, head_dim, dtype)
    if key not in _forms:
        _forms[key] = _pick(setting, group, head_dim, dtype)
    return _forms[key]


def _pick(setting: str, group: int, head_dim: int, dtype: torch.dtype) -> str | None:
    if setting == "0" or not cpu_decode.load():
        return None
    ops = torch.ops.prism_kernels
    if dtype == torch.float32:
        # NOTE: where torch's own kernels are AVX2 too (measured faster there); on an AVX512 CPU torch's flash
        # kernel runs twice our vector width and keeps fp32 until the kernel is measured there.
        avx2 = torch.backends.cpu.get_cpu_capability() == "AVX2" or setting == "avx2"
        return "avx2" if avx2 and ops.paged_prefill_fp32_supported(group, head_dim) else None
    if dtype != torch.bfloat16:
        return None
    if setting != "avx512" and amx_tiles() and ops.paged_prefill_amx_supported(group, head_dim):
        return "amx"
    return "avx512" if ops.paged_prefill_supported(group, head_dim) else None


def usable(q: torch.Tensor, key_cache: torch.Tensor) -> bool:
    """Whether :func:`prefill` takes these q (n, h, d) / key_cache (nb, bs, hk, d): one dtype on a CPU, a form
    of the kernel for this group, head dim and dtype (:func:`form`)."""
    if q.dtype != key_cache.dtype or q.device.type != "cpu" or not cpu_decode.load():
        return False
    return form(q.shape[1] // key_cache.shape[2], q.shape[2], q.dtype) is not None


def prefill(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seqlens_k: torch.Tensor,
    softmax_scale: float,
) -> torch.Tensor:
    """``AttentionBackend.prefill`` on the compiled kernel (check :func:`usable` first): q (n, h, d) bf16 or fp32
    -> (n, h, d); caches (nb, bs, hk, d) of q's dtype, contiguous; block_tables (b, mb), cu_seqlens_q (b + 1,),
    seqlens_k (b,) (any int dtype). Query j of request i sits at context position seqlens_k[i] - q_len_i + j
    (causal, aligned bottom-right)."""
    q = q.contiguous()
    out = torch.empty_like(q)
    ops = torch.ops.prism_kernels
    op = {"amx": ops.paged_prefill_amx, "avx2": ops.paged_prefill_fp32}.get(
        form(q.shape[1] // key_cache.shape[2], q.shape[2], q.dtype), ops.paged_prefill)
    op(q, key_cache, value_cache, block_tables.to(torch.int32), cu_seqlens_q.to(torch.int32),
       seqlens_k.to(torch.int32), softmax_scale, out)
    return out
