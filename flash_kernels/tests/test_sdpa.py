"""The SDPA backend (torch's fused CPU kernels) against the reference, across the shapes the shard produces:
grouped-query attention, block sizes, cached prefixes, mixed prefill/decode batches, fp32 and bf16. The compiled
prefill kernels, which take CPU prefill from this backend where they build, are off here: test_cpu_prefill
covers them."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from flash_kernels import api, reference
from flash_kernels.backends import cpu_prefill
from flash_kernels.backends.sdpa import SdpaBackend, decode_gathered
from flash_kernels.tests.paged_cases import assert_close, decode_requests, make_case, mixed_requests

BACKEND = SdpaBackend()


@pytest.fixture(autouse=True)
def _torch_prefill():
    cpu_prefill.set_enabled(False)
    yield
    cpu_prefill.set_enabled(None)


@pytest.mark.parametrize("block_size", [1, 16, 256])
@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_mixed_prefill_matches_reference(block_size: int, group: int, head_dim: int) -> None:
    case = make_case(mixed_requests(block_size), block_size, kv_heads=2, group=group, head_dim=head_dim)
    assert_close(BACKEND.prefill(*case.prefill_args()), reference.prefill(*case.prefill_args()))


@pytest.mark.parametrize("block_size", [1, 16, 256])
@pytest.mark.parametrize("group", [1, 2, 4])
def test_decode_matches_reference(block_size: int, group: int) -> None:
    case = make_case(decode_requests(block_size), block_size, kv_heads=2, group=group, head_dim=64)
    assert_close(BACKEND.decode(*case.decode_args()), reference.decode(*case.decode_args()))


@pytest.mark.parametrize(
    "requests",
    [
        [(0, 37)],
        [(48, 20)],
        [(0, 1)],
        [(5, 0), (0, 30), (17, 1)],
        [(20, 1), (0, 30), (5, 1), (7, 0), (40, 12)],
    ],
)
@pytest.mark.parametrize("block_size", [1, 16])
def test_cold_single_cached_prefix_and_empty_rows(requests: list[tuple[int, int]], block_size: int) -> None:
    """The is_causal path (one cold request), a cached prefix, a one-token prompt, a request with no new
    tokens between others, and decodes merged with prompt pieces (the one-token rows take the decode path)."""
    case = make_case(requests, block_size, kv_heads=2, group=2, head_dim=64, seed=5)
    assert_close(BACKEND.prefill(*case.prefill_args()), reference.prefill(*case.prefill_args()))


@pytest.mark.parametrize("prefix,new", [(48, 20), (45, 7), (130, 100), (3, 64)])
@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_one_prompt_after_a_cached_prefix_matches_reference(
    prefix: int, new: int, group: int, dtype: torch.dtype
) -> None:
    """The two-call path (prefix without a mask, the piece is_causal, merged by log-sum-exp), with prefixes
    that end inside a block and pieces longer than their prefix; also beside one-token rows."""
    for requests in ([(prefix, new)], [(prefix, new), (9, 1)]):
        case = make_case(requests, 16, kv_heads=2, group=group, head_dim=64, dtype=dtype, seed=prefix)
        assert_close(BACKEND.prefill(*case.prefill_args()), reference.prefill(*case.prefill_args()))


@pytest.mark.parametrize(
    "requests",
    [
        [(0, 200)] + [(180, 6)] * 5,  # a cold prompt beside short pieces over long cached prefixes
        [(3, 0), (0, 150), (120, 4), (2, 9), (0, 0), (60, 70)],  # classes, and requests with no new tokens
        [(0, 2), (0, 40), (100, 3)] + [(0, 1)] * 3,  # one-token rows take the decode path first
    ],
)
def test_pieces_of_far_apart_lengths_are_grouped_and_match_reference(requests: list[tuple[int, int]]) -> None:
    """Pieces whose query or context lengths differ by 2x or more run as separate padded calls."""
    case = make_case(requests, 16, kv_heads=2, group=2, head_dim=64, seed=7)
    assert_close(BACKEND.prefill(*case.prefill_args()), reference.prefill(*case.prefill_args()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "requests",
    [
        [(0, 200), (0, 150)],  # two cold prompts of one length class
        # long cold, long after a prefix, two short of one class, empty, one row, one short alone
        [(0, 300), (40, 130), (180, 6), (170, 5), (7, 0), (50, 1), (0, 40)],
    ],
)
def test_long_pieces_run_apart_and_match_reference(
    requests: list[tuple[int, int]], dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pieces of EACH_MIN_ROWS rows or more run one at a time, never in the masked batch; the others still
    batch; every row matches the reference."""
    from flash_kernels.backends import sdpa

    case = make_case(requests, 16, kv_heads=2, group=2, head_dim=64, dtype=dtype, seed=len(requests))
    batched: list[list[int]] = []
    real = sdpa._prefill_padded

    def spy(q, key_cache, value_cache, block_tables, cu_seqlens_q, *args):
        batched.append((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).tolist())
        return real(q, key_cache, value_cache, block_tables, cu_seqlens_q, *args)

    monkeypatch.setattr(sdpa, "_prefill_padded", spy)
    assert_close(BACKEND.prefill(*case.prefill_args()), reference.prefill(*case.prefill_args()))
    assert all(n < sdpa.EACH_MIN_ROWS for lens in batched for n in lens)
    assert batched == ([] if len(requests) == 2 else [[6, 5]])


def test_decode_with_a_wider_table_and_upper_bound_length() -> None:
    """max_seqlen_k may be an upper bound (the graph-safe decode passes the whole table width)."""
    case = make_case(decode_requests(16), 16, kv_heads=2, group=2, head_dim=64, seed=2)
    args = list(case.decode_args())
    args[5] = case.block_tables.shape[1] * 16
    assert_close(BACKEND.decode(*args), reference.decode(*case.decode_args()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_matches_reference(dtype: torch.dtype) -> None:
    case = make_case(mixed_requests(16), 16, kv_heads=2, group=2, head_dim=64, dtype=dtype)
    assert_close(BACKEND.prefill(*case.prefill_args()), reference.prefill(*case.prefill_args()))
    cold = make_case([(0, 70)], 16, kv_heads=2, group=2, head_dim=64, dtype=dtype, seed=1)
    assert_close(BACKEND.prefill(*cold.prefill_args()), reference.prefill(*cold.prefill_args()))
    step = make_case(decode_requests(16), 16, kv_heads=2, group=2, head_dim=64, dtype=dtype)
    assert_close(BACKEND.decode(*step.decode_args()), reference.decode(*step.decode_args()))


@pytest.mark.parametrize("n", [512, 530, 601])
def test_long_cold_bf16_prompt_is_padded_and_matches_reference(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cold bf16 prompt of PAD_MIN_ROWS or more runs padded to PAD_MULTIPLE rows (fewer JIT'd flash shapes):
    the real rows match the reference and the call without padding."""
    from flash_kernels.backends import sdpa

    case = make_case([(0, n)], 16, kv_heads=2, group=2, head_dim=64, dtype=torch.bfloat16, seed=n)
    calls: list[int] = []
    real = sdpa.F.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        calls.append(q.shape[2])
        return real(q, *args, **kwargs)

    monkeypatch.setattr(sdpa.F, "scaled_dot_product_attention", spy)
    padded = BACKEND.prefill(*case.prefill_args())
    assert calls == [-(-n // sdpa.PAD_MULTIPLE) * sdpa.PAD_MULTIPLE]
    assert_close(padded, reference.prefill(*case.prefill_args()))
    monkeypatch.setattr(sdpa, "PAD_MIN_ROWS", 10**9)
    assert_close(padded, BACKEND.prefill(*case.prefill_args()))
    assert calls[-1] == n


def test_store_kv_matches_reference() -> None:
    caches = [torch.zeros(5, 4, 2, 8) for _ in range(4)]
    key, value = torch.randn(7, 2, 8), torch.randn(7, 2, 8)
    slots = torch.tensor([19, 0, 4, 5, 9, 12, 3])
    BACKEND.store_kv(caches[0], caches[1], key, value, slots)
    reference.store_kv(caches[2], caches[3], key, value, slots)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])


def test_every_path_runs_the_fused_flash_kernel() -> None:
    """Not the math fallback (materialized scores): the flash kernel for CPUs on each of the four paths
    (decode: the path without the compiled kernel, see test_cpu_decode)."""
    cold = make_case([(0, 40)], 16, kv_heads=2, group=2, head_dim=64)
    cached = make_case([(50, 30)], 16, kv_heads=2, group=2, head_dim=64)
    mixed = make_case(mixed_requests(16), 16, kv_heads=2, group=2, head_dim=64)
    step = make_case(decode_requests(16), 16, kv_heads=2, group=2, head_dim=64)
    for call in (
        lambda: BACKEND.prefill(*cold.prefill_args()),
        lambda: BACKEND.prefill(*cached.prefill_args()),
        lambda: BACKEND.prefill(*mixed.prefill_args()),
        lambda: decode_gathered(*step.decode_args()),
    ):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            call()
        names = {e.key for e in prof.key_averages()}
        assert "aten::_scaled_dot_product_flash_attention_for_cpu" in names, sorted(names)


def test_auto_picks_sdpa_on_cpu() -> None:
    assert api.get_backend("auto", device="cpu", block_size=16).name == "sdpa"
