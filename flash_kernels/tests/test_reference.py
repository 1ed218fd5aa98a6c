"""The reference (the spec every backend is tested against) against brute-force SDPA on contiguous K/V."""

from __future__ import annotations

import pytest
import torch

from flash_kernels import reference
from flash_kernels.tests.paged_cases import (
    TOLERANCE,
    brute_force,
    context_slots,
    decode_requests,
    make_case,
    mixed_requests,
)


@pytest.mark.parametrize("block_size", [1, 16, 256])
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_prefill_matches_brute_force(block_size: int, group: int, head_dim: int) -> None:
    case = make_case(mixed_requests(block_size), block_size, kv_heads=2, group=group, head_dim=head_dim)
    out = reference.prefill(*case.prefill_args())
    torch.testing.assert_close(out.double(), brute_force(case), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block_size", [1, 16, 256])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_decode_matches_brute_force(block_size: int, group: int) -> None:
    case = make_case(decode_requests(block_size), block_size, kv_heads=2, group=group, head_dim=64)
    out = reference.decode(*case.decode_args())
    torch.testing.assert_close(out.double(), brute_force(case), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_within_rounding_of_brute_force(dtype: torch.dtype) -> None:
    case = make_case(mixed_requests(16), 16, kv_heads=2, group=4, head_dim=64, dtype=dtype)
    out = reference.prefill(*case.prefill_args())
    assert out.dtype == dtype
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.double(), brute_force(case), atol=tol, rtol=tol)


def test_store_kv_writes_each_token_at_its_slot() -> None:
    key_cache = torch.zeros(4, 3, 2, 8)
    value_cache = torch.zeros(4, 3, 2, 8)
    key, value = torch.randn(5, 2, 8), torch.randn(5, 2, 8)
    slots = torch.tensor([11, 0, 4, 5, 9])
    reference.store_kv(key_cache, value_cache, key, value, slots)
    for token, slot in enumerate(slots.tolist()):
        assert torch.equal(key_cache[slot // 3, slot % 3], key[token])
        assert torch.equal(value_cache[slot // 3, slot % 3], value[token])
    untouched = set(range(12)) - set(slots.tolist())
    assert all(key_cache.view(12, 2, 8)[s].abs().sum() == 0 for s in untouched)


def test_gather_context_follows_the_block_table() -> None:
    block_size = 4
    cache = torch.arange(6 * block_size, dtype=torch.float32).view(6, block_size, 1, 1)
    row = torch.tensor([5, 2, 0], dtype=torch.int32)
    got = reference.gather_context(cache, row, 6).flatten()
    assert got.tolist() == context_slots(row, 6, block_size).float().tolist()
