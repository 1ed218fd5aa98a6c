"""Triton kernels against the reference, run on CPU under TRITON_INTERPRET=1 (set in conftest.py).

triton is imported unconditionally: it is part of the test extra, so a missing triton fails this module
instead of skipping it. Shapes stay tiny because the interpreter runs every program in numpy."""

from __future__ import annotations

import pytest
import torch
import triton  # noqa: F401  (fail, do not skip, when triton is missing)

from flash_kernels import reference
from flash_kernels.backends import triton_paged
from flash_kernels.backends.triton_paged import BLOCK_N, MIN_DOT, Tiles, TritonBackend
from flash_kernels.tests.paged_cases import DEVICE, assert_close, decode_requests, make_case, mixed_requests

BACKEND = TritonBackend()


@pytest.mark.parametrize("block_size", [1, 16, 256])
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_prefill_matches_reference(block_size: int, group: int, head_dim: int) -> None:
    case = make_case(mixed_requests(block_size), block_size, kv_heads=2, group=group, head_dim=head_dim)
    assert_close(BACKEND.prefill(*case.prefill_args()), reference.prefill(*case.prefill_args()))


@pytest.mark.parametrize("block_size", [1, 16, 256])
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_decode_matches_reference(block_size: int, group: int, head_dim: int) -> None:
    case = make_case(decode_requests(block_size), block_size, kv_heads=2, group=group, head_dim=head_dim)
    assert_close(BACKEND.decode(*case.decode_args()), reference.decode(*case.decode_args()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_half_precision_matches_reference(dtype: torch.dtype, head_dim: int) -> None:
    case = make_case(mixed_requests(16), 16, kv_heads=2, group=4, head_dim=head_dim, dtype=dtype)
    assert_close(BACKEND.prefill(*case.prefill_args()), reference.prefill(*case.prefill_args()))
    step = make_case(decode_requests(16), 16, kv_heads=2, group=4, head_dim=head_dim, dtype=dtype)
    assert_close(BACKEND.decode(*step.decode_args()), reference.decode(*step.decode_args()))


def test_long_prompt_spans_several_query_and_key_tiles() -> None:
    """A 150-token suffix after a 70-token prefix: several query tiles per request and unmasked key tiles
    before the diagonal ones, with a request of zero new tokens in between (it must be skipped)."""
    case = make_case([(70, 150), (3, 0), (0, 65)], 16, kv_heads=1, group=2, head_dim=64, seed=3)
    assert_close(BACKEND.prefill(*case.prefill_args()), reference.prefill(*case.prefill_args()))


def test_prefixes_around_key_tile_edges() -> None:
    """Cached prefixes just below, at and past a multiple of the kernel's key tile: where the unmasked part of
    the key loop ends and the causal (diagonal) part begins."""
    edges = (BLOCK_N - 9, BLOCK_N - 2, BLOCK_N - 1, BLOCK_N, BLOCK_N + 1, 2 * BLOCK_N - 1)
    requests = [(prefix, 3) for prefix in edges]
    case = make_case(requests, 16, kv_heads=1, group=4, head_dim=64, seed=5)
    assert_close(BACKEND.prefill(*case.prefill_args()), reference.prefill(*case.prefill_args()))


def test_prefill_tiles_follow_the_device_shared_memory() -> None:
    """256-row tiles only for 16-bit prefill on Hopper-class shared memory (227 KB); A100-class (163 KB) and
    the interpreter (0) keep 128 rows; fp32 at d=128 and decode are unaffected."""
    hopper, ampere = 227 * 1024, 163 * 1024
    assert triton_paged._tiles(torch.bfloat16, 128, False, hopper) == Tiles(rows=256, num_warps=8, num_stages=3)
    assert triton_paged._tiles(torch.float16, 64, False, hopper).rows == 256
    assert triton_paged._tiles(torch.bfloat16, 128, False, ampere).rows == 128
    assert triton_paged._tiles(torch.bfloat16, 128, False).rows == 128
    assert triton_paged._tiles(torch.float32, 128, False, hopper).rows == 64
    assert triton_paged._tiles(torch.bfloat16, 128, True, hopper).rows == MIN_DOT


@pytest.mark.parametrize(("rows", "keys", "warps", "stages"), [(256, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 3)])
def test_other_launch_shapes_match_the_reference(rows: int, keys: int, warps: int, stages: int) -> None:
    """The tile sweep's shapes (flash_kernels.bench.tiles): another query tile, key tile, warps and stages
    compute the same attention, across key-tile edges and with a zero-length request."""
    tiles = Tiles(rows=rows, num_warps=warps, num_stages=stages, keys=keys)
    case = make_case([(70, 150), (keys - 1, 3), (3, 0), (0, 65)], 16, kv_heads=2, group=4, head_dim=64, seed=7)
    got = triton_paged.prefill(*case.prefill_args(), tiles=tiles)
    assert_close(got, reference.prefill(*case.prefill_args()))


@pytest.mark.parametrize(("block_size", "group", "head_dim"), [(7, 3, 80), (3, 2, 8)])
def test_odd_block_size_gqa_ratio_and_head_dim(block_size: int, group: int, head_dim: int) -> None:
    """Non-power-of-two sizes and a head dim below tl.dot's minimum: padded inside the tile and masked."""
    case = make_case(
        mixed_requests(block_size), block_size, kv_heads=2, group=group, head_dim=head_dim, seed=1
    )
    assert_close(BACKEND.prefill(*case.prefill_args()), reference.prefill(*case.prefill_args()))
    step = make_case(decode_requests(block_size), block_size, kv_heads=2, group=group, head_dim=head_dim)
    assert_close(BACKEND.decode(*step.decode_args()), reference.decode(*step.decode_args()))


def test_decode_reads_lengths_from_the_device_tensor_only() -> None:
    """CUDA graphs replay decode with the max_seqlen_k seen at capture: the result must not depend on it."""
    case = make_case(decode_requests(16), 16, kv_heads=2, group=4, head_dim=64)
    q, kc, vc, tables, seqlens, _, scale = case.decode_args()
    assert_close(BACKEND.decode(q, kc, vc, tables, seqlens, 1, scale), reference.decode(*case.decode_args()))


def test_strided_query_as_sliced_from_a_fused_projection() -> None:
    case = make_case(mixed_requests(16), 16, kv_heads=2, group=4, head_dim=64)
    fused = torch.cat([case.q, torch.randn(case.q.shape[0], 4, 64, device=DEVICE)], dim=1)
    strided_q = fused[:, : case.q.shape[1]]
    assert not strided_q.is_contiguous()
    args = (strided_q, *case.prefill_args()[1:])
    assert_close(BACKEND.prefill(*args), reference.prefill(*case.prefill_args()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("block_size", [1, 16, 256])
def test_store_kv_matches_reference(dtype: torch.dtype, block_size: int) -> None:
    gen = torch.Generator().manual_seed(block_size)
    num_blocks, kv_heads, head_dim = 3, 2, 64
    shape = (num_blocks, block_size, kv_heads, head_dim)
    caches = [torch.randn(shape, generator=gen).to(dtype).to(DEVICE) for _ in range(2)]
    expected = [c.clone() for c in caches]
    n = min(9, num_blocks * block_size)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:n].to(DEVICE)
    # K and V sliced out of one fused (n, 3 * hk, d) projection, as a model produces them: strided rows.
    fused = torch.randn(n, 3 * kv_heads, head_dim, generator=gen).to(dtype).to(DEVICE)
    key, value = fused[:, kv_heads : 2 * kv_heads], fused[:, 2 * kv_heads :]
    BACKEND.store_kv(caches[0], caches[1], key, value, slots)
    reference.store_kv(expected[0], expected[1], key, value, slots)
    assert torch.equal(caches[0], expected[0]) and torch.equal(caches[1], expected[1])
