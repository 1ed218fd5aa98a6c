"""The compiled CPU decode kernel (flash_kernels/backends/cpu_decode.cpp) against the reference and the SDPA
path it replaces: block sizes, grouped-query attention, head dims (64 / 128 specialised: AVX512-BF16 for bf16,
AVX2 for fp32 and for bf16 elsewhere; 80 generic), dtypes, tables wider than the context, contexts of every
length around the kernel's 16- and 8-key chunks, blocks smaller than a chunk, long contexts and scores spread wide; that it builds wherever a compiler is present, and the
switches.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from flash_kernels import reference
from flash_kernels.backends import cpu_decode
from flash_kernels.backends.sdpa import SdpaBackend, decode_gathered
from flash_kernels.tests.paged_cases import assert_close, brute_force, decode_requests, make_case

BUILT = cpu_decode.load()
HAVE_TOOLS = bool(shutil.which("c++") and shutil.which("ninja"))
# NOTE: skipped only where the kernel cannot be built at all; with the tools present a failed build fails.
needs_tools = pytest.mark.skipif(not HAVE_TOOLS, reason="no c++ / ninja: decode runs on SDPA (test_sdpa)")


def test_kernel_builds_where_a_compiler_is_present() -> None:
    assert BUILT == HAVE_TOOLS, "c++ and ninja are on PATH but the kernel did not build (see the log)"


@needs_tools
@pytest.mark.parametrize("block_size", [1, 16, 256])
@pytest.mark.parametrize("group", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("head_dim", [64, 128, 80])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_matches_reference(block_size: int, group: int, head_dim: int, dtype: torch.dtype) -> None:
    """bf16 at head dims 64 / 128 takes the AVX512-BF16 path where compiled in, 80 the generic loop."""
    case = make_case(decode_requests(block_size), block_size, kv_heads=2, group=group, head_dim=head_dim,
                     dtype=dtype)
    args = case.decode_args()
    out = cpu_decode.decode(*args)
    assert_close(out, reference.decode(*args))


@needs_tools
@pytest.mark.parametrize("kv_heads", [1, 3, 8])
@pytest.mark.parametrize("group", [1, 2, 4])
def test_kv_head_counts_other_than_two(kv_heads: int, group: int) -> None:
    """Every other test has 2 KV heads. The bf16 path splits each row offset by head and shares the next
    request's rows out among its heads' tasks for prefetching (unevenly for 3)."""
    case = make_case(decode_requests(16), 16, kv_heads=kv_heads, group=group, head_dim=64, dtype=torch.bfloat16)
    args = case.decode_args()
    assert_close(cpu_decode.decode(*args), reference.decode(*args))


@needs_tools
@pytest.mark.parametrize("block_size", [5, 16, 48])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_context_length_around_the_chunks(block_size: int, dtype: torch.dtype) -> None:
    """Lengths 1-40 and around 64 / 256: partial 16-key chunks at every offset, chunks that span blocks
    (block 5) and blocks holding several chunks; blocks handed out in a random order."""
    lengths = [*range(1, 41), 63, 64, 65, 255, 257]
    requests = [(n - 1, 1) for n in lengths]
    for group, head_dim in ((2, 64), (3, 128), (7, 64), (8, 128)):
        case = make_case(requests, block_size, kv_heads=2, group=group, head_dim=head_dim, dtype=dtype,
                         seed=5)
        args = case.decode_args()
        assert_close(cpu_decode.decode(*args), reference.decode(*args))


@needs_tools
@pytest.mark.parametrize("group", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_long_contexts_and_wide_scores_stay_finite(group: int, head_dim: int, dtype: torch.dtype) -> None:
    """2,000 and 1,500 keys with q scaled so that scores span thousands (softmax near one-hot, most weights
    below exp(-87)): finite, and equal to an fp64 softmax."""
    case = make_case([(1999, 1), (1499, 1), (0, 1)], 16, kv_heads=2, group=group, head_dim=head_dim,
                     dtype=dtype, seed=7)
    case.q = (case.q.float() * 300).to(dtype)
    args = case.decode_args()
    out = cpu_decode.decode(*args)
    assert torch.isfinite(out.float()).all()
    if dtype == torch.bfloat16:
        assert_close(out, brute_force(case).to(dtype))
    else:  # scores in the thousands: fp32 rounds one by ~1e-4, which moves its weight as much (the reference: 2e-5)
        torch.testing.assert_close(out, brute_force(case).float(), atol=1e-4, rtol=1e-4)


@needs_tools
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_kernel_matches_the_sdpa_path(dtype: torch.dtype) -> None:
    case = make_case([(0, 1), (300, 1), (37, 1), (15, 1)], 16, kv_heads=2, group=8, head_dim=64, dtype=dtype)
    args = case.decode_args()
    assert_close(cpu_decode.decode(*args), decode_gathered(*args))
    assert_close(cpu_decode.decode(*args), reference.decode(*args))


@needs_tools
def test_backend_decode_runs_the_kernel_and_reads_no_padding() -> None:
    """SdpaBackend.decode takes the kernel; a table wider than the context (and garbage past each request's
    length) changes nothing."""
    case = make_case(decode_requests(16), 16, kv_heads=2, group=2, head_dim=64, seed=3)
    args = case.decode_args()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = SdpaBackend().decode(*args)
    names = {e.key for e in prof.key_averages()}
    assert "prism_kernels::paged_decode" in names and not any("scaled_dot_product" in n for n in names)
    assert_close(out, reference.decode(*args))


@needs_tools
def test_a_context_longer_than_its_table_is_refused() -> None:
    case = make_case(decode_requests(16), 16, kv_heads=2, group=2, head_dim=64)
    args = list(case.decode_args())
    args[4] = args[4].clone()
    args[4][0] = case.block_tables.shape[1] * 16 + 1
    with pytest.raises(RuntimeError, match="exceeds its block table"):
        cpu_decode.decode(*args)


@needs_tools
@pytest.mark.parametrize("block_id", [-1, 10_000])
def test_a_block_id_outside_the_pool_is_refused(block_id: int) -> None:
    case = make_case(decode_requests(16), 16, kv_heads=2, group=2, head_dim=64)
    args = list(case.decode_args())
    args[3] = args[3].clone()
    args[3][2, 0] = block_id  # request 2's first block: inside its context
    with pytest.raises(RuntimeError, match="outside the pool"):
        cpu_decode.decode(*args)


def test_set_enabled_switches_between_the_kernel_and_sdpa() -> None:
    case = make_case(decode_requests(16), 16, kv_heads=2, group=2, head_dim=64)
    try:
        for on in (False, True, False):
            cpu_decode.set_enabled(on)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                SdpaBackend().decode(*case.decode_args())
            names = {e.key for e in prof.key_averages()}
            assert ("prism_kernels::paged_decode" in names) == (on and BUILT)
            assert ("aten::_scaled_dot_product_flash_attention_for_cpu" in names) == (not (on and BUILT))
    finally:
        cpu_decode.set_enabled(True)


def test_switched_off_by_env(monkeypatch) -> None:
    monkeypatch.setenv(cpu_decode.ENV, "0")
    monkeypatch.setattr(cpu_decode, "_state", {})
    assert cpu_decode.load() is False
    case = make_case(decode_requests(16), 16, kv_heads=2, group=2, head_dim=64)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        SdpaBackend().decode(*case.decode_args())
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in {e.key for e in prof.key_averages()}


def test_a_killed_build_leaves_no_lock_that_blocks_the_next_load(tmp_path) -> None:
    """A loader killed while building (its process gone) must not make later loaders wait forever: the OS
    drops its lock, and torch's own `lock` file it left is removed by the next holder."""
    import fcntl
    import signal
    import subprocess
    import sys
    import time

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
         "from flash_kernels.backends.cpu_decode import _build_lock\n"
         "with _build_lock(Path(sys.argv[1])):\n"
         "    (Path(sys.argv[1]) / 'lock').touch(); print('held', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with open(tmp_path / "prism-build.flock", "w") as handle:  # held by the child: not ours to take
            with pytest.raises(BlockingIOError):
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / "lock").exists()
    start = time.monotonic()
    with cpu_decode._build_lock(tmp_path):
        assert not (tmp_path / "lock").exists()
    assert time.monotonic() - start < 5
