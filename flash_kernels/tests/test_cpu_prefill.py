"""The compiled bf16 prefill kernel (flash_kernels/backends/cpu_prefill.cpp) against the reference: cold prompts,
pieces after cached prefixes ending inside a block, several pieces of far-apart lengths in one call, requests
with no new tokens, block sizes, grouped-query attention, head dims; that the SDPA backend routes bf16 prefill to
it (and fp32 not), the switches, and the checks on bad tables."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from flash_kernels import reference
from flash_kernels.backends import cpu_decode, cpu_prefill
from flash_kernels.backends.sdpa import SdpaBackend
from flash_kernels.tests.paged_cases import assert_close, brute_force, make_case

KERNEL = "prism_kernels::paged_prefill"
FLASH = "aten::_scaled_dot_product_flash_attention_for_cpu"
# NOTE: the kernel exists only where the compiler targets AVX512-BF16 (-march=native on such a CPU); elsewhere
# bf16 prefill stays on torch's flash kernel (test_sdpa covers that path).
USABLE = cpu_decode.load() and bool(torch.ops.prism_kernels.paged_prefill_supported(2, 64))
needs_kernel = pytest.mark.skipif(not USABLE, reason="no AVX512-BF16 build: bf16 prefill runs on SDPA")


def _ops(call) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    return {e.key for e in prof.key_averages()}


@needs_kernel
@pytest.mark.parametrize(
    "requests",
    [
        [(0, 37)],  # cold, one partial tile
        [(512, 529)],  # the RAG step: a piece over a cached prefix, longer than one key block
        [(45, 7)],  # prefix ending inside a block, piece shorter than a tile
        [(3, 130), (0, 2), (200, 1), (7, 0), (60, 70)],  # far-apart lengths, a one-token and a zero-token row
    ],
)
@pytest.mark.parametrize("block_size", [1, 16, 256])
@pytest.mark.parametrize("group", [1, 2, 4, 8])
def test_kernel_matches_reference(requests: list[tuple[int, int]], block_size: int, group: int) -> None:
    case = make_case(requests, block_size, kv_heads=2, group=group, head_dim=64, dtype=torch.bfloat16, seed=group)
    args = case.prefill_args()
    out = cpu_prefill.prefill(*args[:6], case.scale)
    assert_close(out, reference.prefill(*args))


@needs_kernel
def test_head_dim_128_and_one_kv_head_match_brute_force() -> None:
    for kv_heads, head_dim in ((1, 128), (4, 64)):
        case = make_case([(100, 40), (0, 65)], 16, kv_heads=kv_heads, group=2, head_dim=head_dim,
                         dtype=torch.bfloat16, seed=kv_heads)
        out = cpu_prefill.prefill(*case.prefill_args()[:6], case.scale)
        assert_close(out, brute_force(case).to(torch.bfloat16))


@pytest.fixture
def forced_on():
    """The kernel wherever it applies, AMX CPUs too (where the default leaves prefill to torch's flash)."""
    cpu_prefill.set_enabled(True)
    yield
    cpu_prefill.set_enabled(None)


@needs_kernel
def test_backend_prefill_runs_the_kernel_for_bf16_only(forced_on) -> None:
    """bf16 prompt pieces (beside a one-token row, which takes the decode kernel) run no flash kernel; fp32
    keeps torch's."""
    bf16 = make_case([(50, 30), (9, 1), (0, 12)], 16, kv_heads=2, group=2, head_dim=64, dtype=torch.bfloat16)
    names = _ops(lambda: SdpaBackend().prefill(*bf16.prefill_args()))
    assert KERNEL in names and FLASH not in names
    assert_close(SdpaBackend().prefill(*bf16.prefill_args()), reference.prefill(*bf16.prefill_args()))
    fp32 = make_case([(50, 30)], 16, kv_heads=2, group=2, head_dim=64)
    names = _ops(lambda: SdpaBackend().prefill(*fp32.prefill_args()))
    assert KERNEL not in names and FLASH in names


@needs_kernel
def test_set_enabled_and_env_switch_it(monkeypatch) -> None:
    case = make_case([(50, 30)], 16, kv_heads=2, group=2, head_dim=64, dtype=torch.bfloat16)
    try:
        for on in (False, True):
            cpu_prefill.set_enabled(on)
            names = _ops(lambda: SdpaBackend().prefill(*case.prefill_args()))
            assert (KERNEL in names) == on and (FLASH in names) == (not on)
    finally:
        cpu_prefill.set_enabled(None)
    monkeypatch.setattr(cpu_prefill, "amx_tiles", lambda: True)
    for setting, on in (("0", False), ("1", True), ("auto", False)):
        monkeypatch.setenv(cpu_prefill.ENV, setting)
        assert (KERNEL in _ops(lambda: SdpaBackend().prefill(*case.prefill_args()))) == on, setting


@needs_kernel
@pytest.mark.parametrize("amx", [True, False])
def test_default_leaves_amx_cpus_to_torchs_flash(monkeypatch, amx: bool) -> None:
    """By default the kernel serves CPUs without AMX tiles; with them, torch's flash kernel (on AMX) is faster."""
    monkeypatch.delenv(cpu_prefill.ENV, raising=False)
    monkeypatch.setattr(cpu_prefill, "amx_tiles", lambda: amx)
    case = make_case([(50, 30), (0, 12)], 16, kv_heads=2, group=2, head_dim=64, dtype=torch.bfloat16)
    names = _ops(lambda: SdpaBackend().prefill(*case.prefill_args()))
    assert (KERNEL in names) == (not amx) and (FLASH in names) == amx
    assert_close(SdpaBackend().prefill(*case.prefill_args()), reference.prefill(*case.prefill_args()))


@needs_kernel
def test_bad_tables_are_refused() -> None:
    case = make_case([(20, 10), (0, 5)], 16, kv_heads=2, group=2, head_dim=64, dtype=torch.bfloat16)
    args = list(case.prefill_args()[:6]) + [case.scale]
    too_long = case.seqlens_k.clone()
    too_long[0] = case.block_tables.shape[1] * 16 + 1
    with pytest.raises(RuntimeError, match="exceeds its block table"):
        cpu_prefill.prefill(*args[:5], too_long, case.scale)
    outside = case.block_tables.clone()
    outside[0, 0] = 10_000
    with pytest.raises(RuntimeError, match="outside the pool"):
        cpu_prefill.prefill(*args[:3], outside, *args[4:])
    more_queries = case.seqlens_k.clone()
    more_queries[1] = 4  # 5 new tokens over a context of 4
    with pytest.raises(RuntimeError, match="queries for"):
        cpu_prefill.prefill(*args[:5], more_queries, case.scale)


@needs_kernel
def test_threads_split_tiles_without_changing_a_bit() -> None:
    """Tiles are handed out dynamically over torch's intra-op threads; each is computed by one thread alone."""
    case = make_case([(512, 300), (3, 40), (0, 77)], 16, kv_heads=2, group=2, head_dim=64, dtype=torch.bfloat16)
    args = (*case.prefill_args()[:6], case.scale)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu_prefill.prefill(*args)
        torch.set_num_threads(2)
        assert torch.equal(cpu_prefill.prefill(*args), one)
    finally:
        torch.set_num_threads(before)
