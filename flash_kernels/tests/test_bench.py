"""The benchmark's arithmetic, its no-GPU message, and its tiny CPU run (the code path the GPU run takes)."""

from __future__ import annotations

import shutil

import pytest
import torch

from flash_kernels.bench.__main__ import main
from flash_kernels.bench.attention import cached_prefix, prefill_flops


def test_cached_prefix_rounds_down_to_whole_blocks() -> None:
    assert cached_prefix(4096, 0.9, 16) == 3680
    assert cached_prefix(4096, 0.9, 256) == 3584
    assert cached_prefix(4096, 0.5, 256) == 2048
    assert cached_prefix(4096, 0.0, 16) == 0


def test_prefill_flops_count_each_visible_key_once() -> None:
    # 1 head, d = 1: 2 new tokens after 3 cached see 4 and 5 keys -> 9 pairs x 4 flops.
    assert prefill_flops(heads=1, head_dim=1, prefix=3, new=2) == 36
    assert prefill_flops(heads=32, head_dim=128, prefix=0, new=4096) == 4 * 32 * 128 * 4096 * 4097 // 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_without_cuda_it_exits_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_tiny_cpu_run_prints_every_measure(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["--device", "cpu", "--tiny", "--backends", "reference", "sdpa", "triton", "--block-sizes", "16"]) == 0
    )
    out = capsys.readouterr().out
    for backend in ("reference", "sdpa", "triton"):
        rows = [line for line in out.splitlines() if line.startswith(backend)]
        assert len(rows) == 4, out  # three cached fractions and decode
        assert f"e2e decode step, {backend}" in out
    assert "TFLOP/s" in out and "GB/s" in out and "not judged (tiny)" in out


@pytest.mark.skipif(not (shutil.which("c++") and shutil.which("ninja")), reason="no c++ / ninja: no kernel")
def test_decode_cpu_bench_runs_a_shape(capsys: pytest.CaptureFixture[str]) -> None:
    from flash_kernels.bench import decode_cpu

    q, kc, _, tables, lengths, _, _ = decode_cpu.make_args(decode_cpu.Shape(3, 40, 2, 2, 64))
    assert q.shape == (3, 4, 64) and kc.shape[1:] == (16, 2, 64)
    used = torch.cat([tables[i, : (int(n) + 15) // 16] for i, n in enumerate(lengths)])
    assert len(set(used.tolist())) == len(used)  # no block shared between requests
    assert decode_cpu.main(["--shapes", "0", "--rounds", "1", "--budget-ms", "1", "--evict", "1"]) == 0
    assert "32 x 170, hk 2, G 2, d 64, bf16, block 16" in capsys.readouterr().out


@pytest.mark.skipif(not (shutil.which("c++") and shutil.which("ninja")), reason="no c++ / ninja: no kernel")
def test_prefill_cpu_bench_times_every_shape_and_form(capsys: pytest.CaptureFixture[str]) -> None:
    from flash_kernels.backends import cpu_decode
    from flash_kernels.bench import prefill_cpu

    q, kc, _, tables, cu, lengths = prefill_cpu._case([(40, 9), (0, 20)], 4, 2, 64, torch.Generator())
    assert q.shape == (29, 4, 64) and kc.shape[1:] == (16, 2, 64) and cu.tolist() == [0, 9, 29]
    assert lengths.tolist() == [49, 20] and len(set(tables.flatten().tolist())) == tables.numel()
    if not cpu_decode.load():
        pytest.skip("the compiled CPU kernels did not build here")
    ops = torch.ops.prism_kernels
    for dtype, forms in (("bf16", [f for f, ok in (("amx", ops.paged_prefill_amx_supported(2, 64)),
                                                   ("avx512", ops.paged_prefill_supported(2, 64))) if ok]),
                         ("fp32", ["avx2"] if ops.paged_prefill_fp32_supported(2, 64) else [])):
        assert prefill_cpu.main(["--threads", "1", "--calls", "1", "--dtype", dtype]) == 0
        rows = capsys.readouterr().out.splitlines()
        assert len(rows) == len(prefill_cpu.SHAPES)
        for (name, _), row in zip(prefill_cpu.SHAPES, rows):
            assert name in row and "torch flash" in row and all(f"{f} " in row for f in forms), row
            assert "avx2" not in row if dtype == "bf16" else "avx512" not in row and "amx" not in row, row


@pytest.mark.parametrize(("dtype", "ours", "library"), [("bf16", "tiles", "oneDNN"), ("fp32", "panels", "MKL")])
def test_linear_cpu_bench_times_both_paths_per_row_count(
    capsys: pytest.CaptureFixture[str], dtype: str, ours: str, library: str
) -> None:
    from flash_kernels.bench import linear_cpu

    shapes = linear_cpu.layer_shapes(hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=96)
    assert shapes == [(128, 64), (64, 64), (192, 64), (64, 96)]
    args = ["--rows", "3", "40", "--threads", "1", "--layers", "2", "--rounds", "1", "--hidden", "64",
            "--heads", "4", "--kv-heads", "2", "--head-dim", "16", "--intermediate", "96", "--dtype", dtype]
    if not linear_cpu.USABLE[dtype]():
        assert linear_cpu.main(args) == 2
        return
    assert linear_cpu.main(args) == 0
    rows = capsys.readouterr().out.splitlines()
    assert [r.split(" rows:")[0].split()[-1] for r in rows] == ["3", "40"]
    assert all(ours in r and library in r and "TFLOP/s" in r for r in rows), rows
