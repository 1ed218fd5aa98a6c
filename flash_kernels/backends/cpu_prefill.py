"""The compiled bf16 prefill kernel (``cpu_prefill.cpp``, built with the decode kernel by :mod:`.cpu_decode`):
every prompt piece of a step against its paged context in one call, AVX512-BF16 dot products, rows of a
tile in vector lanes. It serves bf16 prefill on CPUs with AVX512-BF16 but no AMX (head dims 64 / 128, 1 / 2 /
4 / 8 query heads per KV head); other dtypes and CPUs keep torch's flash kernel (:mod:`.sdpa`), which runs its
matrix products on AMX tiles where the CPU has them and there beats this kernel 1.1-2.8x on every prefill shape
measured (docs/performance.md). ``PRISM_CPU_PREFILL_KERNEL=0`` turns it off, ``=1`` uses it on AMX CPUs too;
:func:`set_enabled` does the same in-process.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch

from flash_kernels.backends import cpu_decode

ENV = "PRISM_CPU_PREFILL_KERNEL"
_supported: dict[tuple[int, int], bool] = {}  # (group, head dim) -> compiled for it
_forced: bool | None = None  # set_enabled's choice; None: the default


def set_enabled(on: bool | None) -> None:
    """From now on, in this process: True uses the kernel wherever it applies (AMX CPUs too), False never,
    None goes back to the default (the environment's setting, else: not on AMX CPUs). For A/B runs and tests."""
    global _forced
    _forced = on


@lru_cache(maxsize=1)
def amx_tiles() -> bool:
    """Whether torch sees usable AMX tiles (CPU and OS): then its flash kernel's products run on them."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe()) if probe is not None else False


def _wanted() -> bool:
    if _forced is not None:
        return _forced
    setting = os.environ.get(ENV, "auto")
    return setting != "0" and (setting == "1" or not amx_tiles())


def usable(q: torch.Tensor, key_cache: torch.Tensor) -> bool:
    """Whether :func:`prefill` takes these q (n, h, d) / key_cache (nb, bs, hk, d): bf16 on a CPU, wanted
    (:func:`set_enabled`, the environment, AMX), the extension built with its AVX512-BF16 path for this group
    and head dim."""
    if q.dtype != torch.bfloat16 or q.device.type != "cpu" or not _wanted() or not cpu_decode.load():
        return False
    shape = (q.shape[1] // key_cache.shape[2], q.shape[2])
    if shape not in _supported:
        _supported[shape] = bool(torch.ops.prism_kernels.paged_prefill_supported(*shape))
    return _supported[shape]


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
