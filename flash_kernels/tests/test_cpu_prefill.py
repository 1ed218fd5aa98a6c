"""The compiled prefill kernels, all three forms (bf16 on AVX512-BF16: flash_kernels/backends/cpu_prefill.cpp; bf16
on AMX tiles: cpu_prefill_amx.cpp; fp32 on AVX2: cpu_prefill_avx2.cpp), against the reference: cold prompts,
pieces after cached prefixes ending inside a block, several pieces of far-apart lengths in one call, requests
with no new tokens, block sizes, grouped-query attention (1 to 8 query heads per KV head), head dims; that the
fp32 form gives a query the same bits however its prompt is split or cached; that the SDPA backend routes each
dtype to the CPU's form, the switches, and the checks on bad tables."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from flash_kernels import reference
from flash_kernels.backends import cpu_decode, cpu_prefill
from flash_kernels.backends.sdpa import SdpaBackend
from flash_kernels.tests.paged_cases import assert_close, brute_force, make_case

KERNEL = "prism_kernels::paged_prefill"
AMX_KERNEL = "prism_kernels::paged_prefill_amx"
FP32_KERNEL = "prism_kernels::paged_prefill_fp32"
FLASH = "aten::_scaled_dot_product_flash_attention_for_cpu"
# NOTE: the kernels exist only where the compiler targets AVX512-BF16 / AMX / AVX2 (-march=native on such a
# CPU); elsewhere prefill stays on torch's flash kernel (test_sdpa covers that path).
BUILT = cpu_decode.load()
USABLE = BUILT and bool(torch.ops.prism_kernels.paged_prefill_supported(2, 64))
AMX = USABLE and bool(torch.ops.prism_kernels.paged_prefill_amx_supported(2, 64))
AVX2 = BUILT and bool(torch.ops.prism_kernels.paged_prefill_fp32_supported(2, 64))
AVX2_PICKED = AVX2 and torch.backends.cpu.get_cpu_capability() == "AVX2"  # the default's pick for fp32
needs_kernel = pytest.mark.skipif(not USABLE, reason="no AVX512-BF16 build: bf16 prefill runs on SDPA")
needs_avx2 = pytest.mark.skipif(not AVX2, reason="no AVX2 build: fp32 prefill runs on SDPA")
avx2_picked = pytest.mark.skipif(not AVX2_PICKED, reason="fp32 prefill stays on torch's kernel on this CPU")
DTYPE = {"avx512": torch.bfloat16, "amx": torch.bfloat16, "avx2": torch.float32}
CPU_FORM = AMX_KERNEL if AMX else KERNEL  # the bf16 op the default picks on this machine
FORMS = [pytest.param("avx512", marks=needs_kernel),
         pytest.param("amx", marks=pytest.mark.skipif(not AMX, reason="no AMX tiles: the AVX512 form serves")),
         pytest.param("avx2", marks=needs_avx2)]


def _run(form: str, *args) -> torch.Tensor:
    """One form's op on prefill_args()[:6] + scale (what cpu_prefill.prefill passes it)."""
    q = args[0]
    out = torch.empty_like(q)
    ops = torch.ops.prism_kernels
    op = {"amx": ops.paged_prefill_amx, "avx2": ops.paged_prefill_fp32}.get(form, ops.paged_prefill)
    op(q, args[1], args[2], *(t.to(torch.int32) for t in args[3:6]), args[6], out)
    return out


def _ops(call) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    "requests",
    [
        [(0, 37)],  # cold, one partial tile
        [(512, 529)],  # the RAG step: a piece over a cached prefix, longer than one key block
        [(45, 7)],  # prefix ending inside a block, piece shorter than a tile
        [(3, 130), (0, 2), (200, 1), (7, 0), (60, 70)],  # far-apart lengths, a one-token and a zero-token row
        [(1840, 208)],  # the 90%-cached 2,048-token prompt: many key blocks, a last one partly past the context
    ],
)
@pytest.mark.parametrize("block_size", [1, 16, 256])
@pytest.mark.parametrize("group", [1, 2, 3, 4, 5, 6, 7, 8])  # 3, 5, 6, 7 leave a tile's last rows as padding
def test_kernel_matches_reference(form: str, requests: list[tuple[int, int]], block_size: int, group: int) -> None:
    case = make_case(requests, block_size, kv_heads=2, group=group, head_dim=64, dtype=DTYPE[form], seed=group)
    args = case.prefill_args()
    assert_close(_run(form, *args[:6], case.scale), reference.prefill(*args))


@pytest.mark.parametrize("form", FORMS)
def test_head_dim_128_and_one_kv_head_match_brute_force(form: str) -> None:
    for kv_heads, head_dim in ((1, 128), (4, 64)):
        case = make_case([(100, 40), (0, 65)], 16, kv_heads=kv_heads, group=2, head_dim=head_dim,
                         dtype=DTYPE[form], seed=kv_heads)
        out = _run(form, *case.prefill_args()[:6], case.scale)
        assert_close(out, brute_force(case).to(DTYPE[form]))


@pytest.fixture
def fresh(monkeypatch):
    """The environment's default and no form picked yet (the pick is cached per setting)."""
    monkeypatch.delenv(cpu_prefill.ENV, raising=False)
    monkeypatch.setattr(cpu_prefill, "_forms", {})
    yield monkeypatch
    cpu_prefill.set_enabled(None)


@pytest.mark.parametrize(("dtype", "op"), [pytest.param(torch.bfloat16, CPU_FORM, marks=needs_kernel),
                                         pytest.param(torch.float32, FP32_KERNEL, marks=avx2_picked)])
def test_backend_prefill_runs_the_cpus_form_of_the_dtype(fresh, dtype: torch.dtype, op: str) -> None:
    """Prompt pieces (beside a one-token row, which takes the decode kernel) run the CPU's form of their dtype
    and no flash kernel."""
    case = make_case([(50, 30), (9, 1), (0, 12)], 16, kv_heads=2, group=2, head_dim=64, dtype=dtype)
    names = _ops(lambda: SdpaBackend().prefill(*case.prefill_args()))
    assert op in names and len(names & {FLASH, KERNEL, AMX_KERNEL, FP32_KERNEL}) == 1
    assert_close(SdpaBackend().prefill(*case.prefill_args()), reference.prefill(*case.prefill_args()))


@needs_avx2
def test_fp32_query_gets_the_same_bits_however_its_prompt_is_split() -> None:
    """A 300-token prompt cold in one piece; its last 100 queries after the 200 cached; the prompt as two
    requests of one call (0-150, then 150-300 over the first); its last query alone: equal bit for bit."""
    case = make_case([(0, 300)], 16, kv_heads=2, group=2, head_dim=64, seed=3)
    q, kc, vc, table = case.q, case.key_cache, case.value_cache, case.block_tables
    int32 = lambda *xs: torch.tensor(xs, dtype=torch.int32)  # noqa: E731
    cold = _run("avx2", q, kc, vc, table, int32(0, 300), int32(300), case.scale)
    tail = _run("avx2", q[200:], kc, vc, table, int32(0, 100), int32(300), case.scale)
    halves = _run("avx2", q, kc, vc, table.repeat(2, 1), int32(0, 150, 300), int32(150, 300), case.scale)
    last = _run("avx2", q[299:], kc, vc, table, int32(0, 1), int32(300), case.scale)
    assert torch.equal(tail, cold[200:]) and torch.equal(halves, cold) and torch.equal(last, cold[299:])
    assert_close(cold, reference.prefill(*case.prefill_args()))


@pytest.mark.parametrize(("dtype", "op", "avx512_op"),
                         [pytest.param(torch.bfloat16, CPU_FORM, KERNEL, marks=needs_kernel),
                          pytest.param(torch.float32, FP32_KERNEL, FP32_KERNEL, marks=avx2_picked)])
def test_set_enabled_and_env_switch_it(fresh, dtype: torch.dtype, op: str, avx512_op: str) -> None:
    """``avx512`` names the bf16 form for A/B runs on AMX CPUs; fp32 keeps its one form under it."""
    case = make_case([(50, 30)], 16, kv_heads=2, group=2, head_dim=64, dtype=dtype)
    for on in (False, True):
        cpu_prefill.set_enabled(on)
        names = _ops(lambda: SdpaBackend().prefill(*case.prefill_args()))
        assert (op in names) == on and (FLASH in names) == (not on)
    cpu_prefill.set_enabled(None)
    for setting, expected in (("0", FLASH), ("auto", op), ("avx512", avx512_op)):
        fresh.setenv(cpu_prefill.ENV, setting)
        names = _ops(lambda: SdpaBackend().prefill(*case.prefill_args()))
        assert expected in names and len(names & {FLASH, KERNEL, AMX_KERNEL, FP32_KERNEL}) == 1, setting


@needs_kernel
@pytest.mark.parametrize("amx", [pytest.param(True, marks=pytest.mark.skipif(not AMX, reason="no AMX build")),
                                 False])
def test_the_default_form_follows_the_cpu(fresh, amx: bool) -> None:
    """AMX tiles where torch sees them, else the AVX512-BF16 form; both agree with the reference."""
    fresh.setattr(cpu_prefill, "amx_tiles", lambda: amx)
    case = make_case([(50, 30), (0, 12)], 16, kv_heads=2, group=2, head_dim=64, dtype=torch.bfloat16)
    assert cpu_prefill.form(2, 64) == ("amx" if amx else "avx512")
    names = _ops(lambda: SdpaBackend().prefill(*case.prefill_args()))
    assert (AMX_KERNEL if amx else KERNEL) in names and FLASH not in names
    assert_close(SdpaBackend().prefill(*case.prefill_args()), reference.prefill(*case.prefill_args()))


@needs_avx2
def test_fp32_form_is_picked_where_torchs_kernels_are_avx2(fresh) -> None:
    """On an AVX512 CPU torch's fp32 flash kernel stays the default (twice our vector width, not measured);
    ``PRISM_CPU_PREFILL_KERNEL=avx2`` takes the fp32 form there anyway."""
    for capability, setting, expected in (("AVX2", "auto", "avx2"), ("AVX512", "auto", None),
                                          ("AVX512", "avx2", "avx2"), ("AVX2", "0", None)):
        fresh.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        fresh.setattr(cpu_prefill, "_forms", {})
        fresh.setenv(cpu_prefill.ENV, setting)
        assert cpu_prefill.form(2, 64, torch.float32) == expected, (capability, setting)


@pytest.mark.parametrize("form", FORMS)
def test_bad_tables_are_refused(form: str) -> None:
    case = make_case([(20, 10), (0, 5)], 16, kv_heads=2, group=2, head_dim=64, dtype=DTYPE[form])
    args = list(case.prefill_args()[:6]) + [case.scale]
    too_long = case.seqlens_k.clone()
    too_long[0] = case.block_tables.shape[1] * 16 + 1
    with pytest.raises(RuntimeError, match="exceeds its block table"):
        _run(form, *args[:5], too_long, case.scale)
    outside = case.block_tables.clone()
    outside[0, 0] = 10_000
    with pytest.raises(RuntimeError, match="outside the pool"):
        _run(form, *args[:3], outside, *args[4:])
    more_queries = case.seqlens_k.clone()
    more_queries[1] = 4  # 5 new tokens over a context of 4
    with pytest.raises(RuntimeError, match="queries for"):
        _run(form, *args[:5], more_queries, case.scale)


@pytest.mark.parametrize("form", FORMS)
def test_threads_split_tiles_without_changing_a_bit(form: str) -> None:
    """Tiles are handed out dynamically over torch's intra-op threads; each is computed by one thread alone."""
    case = make_case([(512, 300), (3, 40), (0, 77)], 16, kv_heads=2, group=2, head_dim=64, dtype=DTYPE[form])
    args = (*case.prefill_args()[:6], case.scale)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(form, *args)
        torch.set_num_threads(2)
        assert torch.equal(_run(form, *args), one)
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not AMX, reason="no AMX build")
def test_torchs_amx_products_are_unchanged_around_the_amx_form() -> None:
    """The AMX form sets its own tile configuration; torch's brgemm users (flash attention, here) set theirs
    again after it, and the AMX linear after both."""
    from flash_kernels.backends import cpu_linear

    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 4, 300, 64, generator=gen).bfloat16() for _ in range(3))
    x, w = torch.randn(33, 100, generator=gen).bfloat16(), torch.randn(70, 100, generator=gen).bfloat16()
    before = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    linear = cpu_linear.linear(x, cpu_linear.pack(w), 70, None) if cpu_linear.usable() else None
    case = make_case([(40, 70)], 16, kv_heads=2, group=2, head_dim=64, dtype=torch.bfloat16)
    for _ in range(3):
        _run("amx", *case.prefill_args()[:6], case.scale)
        assert torch.equal(torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True), before)
        if linear is not None:
            assert torch.equal(cpu_linear.linear(x, cpu_linear.pack(w), 70, None), linear)
