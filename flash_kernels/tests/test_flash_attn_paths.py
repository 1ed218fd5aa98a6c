"""The flash-attn backend's wiring on CPU: flash-attn itself cannot be installed here, so its two entry points
are replaced by torch stand-ins that follow its documented contract (packed or paged K/V, causal mask aligned
bottom-right, cache_seqlens, block_table). Checks both the paged path (block size 256) and the gather path."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from flash_kernels import reference
from flash_kernels.backends.flash_attn import FlashAttnBackend, cumulative, gather_packed, gather_padded
from flash_kernels.tests.paged_cases import TOLERANCE, decode_requests, make_case, mixed_requests


def fake_varlen(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    softmax_scale=None,
    causal=False,
    block_table=None,
):
    """flash_attn_varlen_func: q (n, h, d); k/v packed (total_k, hk, d), or the pool with block_table."""
    assert causal and k.dtype == q.dtype
    cu_q, cu_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    out = torch.empty_like(q)
    for i in range(len(cu_q) - 1):
        length = cu_k[i + 1] - cu_k[i]
        if block_table is None:
            keys, values = k[cu_k[i] : cu_k[i + 1]], v[cu_k[i] : cu_k[i + 1]]
        else:
            keys = reference.gather_context(k, block_table[i], length)
            values = reference.gather_context(v, block_table[i], length)
        new = cu_q[i + 1] - cu_q[i]
        out[cu_q[i] : cu_q[i + 1]] = reference.attend(
            q[cu_q[i] : cu_q[i + 1]], keys, values, length - new, softmax_scale
        )
    return out


def fake_kvcache(q, k_cache, v_cache, cache_seqlens=None, block_table=None, softmax_scale=None, causal=False):
    """flash_attn_with_kvcache: q (b, 1, h, d); caches (b, L, hk, d), or the pool with block_table."""
    assert causal and q.shape[1] == 1
    out = torch.empty_like(q)
    for i, length in enumerate(cache_seqlens.tolist()):
        if block_table is None:
            keys, values = k_cache[i, :length], v_cache[i, :length]
        else:
            keys = reference.gather_context(k_cache, block_table[i], length)
            values = reference.gather_context(v_cache, block_table[i], length)
        out[i] = reference.attend(q[i], keys, values, length - 1, softmax_scale)
    return out


BACKEND = FlashAttnBackend(varlen=fake_varlen, kvcache=fake_kvcache)


@pytest.mark.parametrize("block_size", [16, 256])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_prefill_paths_match_reference(block_size: int, dtype: torch.dtype) -> None:
    case = make_case(mixed_requests(block_size), block_size, kv_heads=2, group=4, head_dim=64, dtype=dtype)
    out = BACKEND.prefill(*case.prefill_args())
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out, reference.prefill(*case.prefill_args()), atol=tol, rtol=tol)


@pytest.mark.parametrize("block_size", [16, 256])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_decode_paths_match_reference(block_size: int, dtype: torch.dtype) -> None:
    case = make_case(decode_requests(block_size), block_size, kv_heads=2, group=4, head_dim=64, dtype=dtype)
    out = BACKEND.decode(*case.decode_args())
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out, reference.decode(*case.decode_args()), atol=tol, rtol=tol)


def test_gather_helpers_follow_the_block_table() -> None:
    case = make_case([(5, 2), (0, 1), (20, 3)], 4, kv_heads=2, group=1, head_dim=8)
    packed = gather_packed(case.key_cache, case.block_tables, case.seqlens_k)
    assert torch.equal(packed, torch.cat(case.keys))
    padded = gather_padded(case.key_cache, case.block_tables)
    assert padded.shape == (3, case.block_tables.shape[1] * 4, 2, 8)
    for i, keys in enumerate(case.keys):
        assert torch.equal(padded[i, : keys.shape[0]], keys)
    assert cumulative(case.seqlens_k).tolist() == [0, 7, 8, 31]


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash_attn is installed")
def test_construction_without_flash_attn_raises_import_error() -> None:
    with pytest.raises(ImportError):
        FlashAttnBackend()
