"""Prepacked bf16 CPU linears, in both forms (AMX tiles where the CPU has them, oneDNN's layout elsewhere):
the results F.linear gives (oneDNN: bit for bit; tiles: within one bf16 step of the fp32 product, F.linear's
own above their rows), same state_dict, fp32 untouched, switched off."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from flash_kernels.backends import cpu_linear
from shard.layers import packed_linear
from shard.layers.packed_linear import PackedLinear, TiledLinear, pack_cpu_linears

needs_tiles = pytest.mark.skipif(not cpu_linear.usable(), reason="needs a CPU with AMX tiles")
needs_onednn_bf16 = pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                                       reason="oneDNN's bf16 path needs avx512bw/vl/dq or avx_ne_convert")


@pytest.fixture
def onednn(monkeypatch) -> None:
    """The oneDNN form, also on an AMX CPU."""
    monkeypatch.setenv(cpu_linear.ENV, "0")


def _model(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96, bias=False), nn.Linear(96, 64, bias=True)).to(dtype)


def _plain(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.linear(F.linear(x, model[0].weight), model[1].weight, model[1].bias)


@needs_onednn_bf16
def test_bf16_linears_are_packed_and_give_f_linear_results(onednn) -> None:
    model = _model(torch.bfloat16)
    keys = set(model.state_dict())
    assert pack_cpu_linears(model) == 2
    assert all(type(m) is PackedLinear for m in model)
    assert set(model.state_dict()) == keys  # the packed copy is not part of the checkpoint
    for shape in [(1, 64), (7, 64), (300, 64), (2, 5, 64)]:  # 300 rows: F.linear (PACKED_MAX_ROWS)
        x = torch.randn(shape, dtype=torch.bfloat16)
        assert torch.equal(model(x), _plain(model, x))


@needs_tiles
def test_tiles_on_amx_within_one_bf16_step_and_f_linear_above_the_rows() -> None:
    torch.manual_seed(1)
    layer = nn.Linear(100, 70, bias=True).to(torch.bfloat16)  # a partial depth chunk and a partial block
    keys = set(layer.state_dict())
    assert pack_cpu_linears(layer) == 1 and type(layer) is TiledLinear
    assert set(layer.state_dict()) == keys
    x = torch.randn(2, 400, 100, dtype=torch.bfloat16)  # 800 rows: F.linear
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    x = torch.randn(3, 17, 100, dtype=torch.bfloat16)
    exact = F.linear(x.float(), layer.weight.float(), layer.bias.float())
    got = layer(x)
    assert got.shape == (3, 17, 70) and got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), exact, rtol=2**-7, atol=1e-3)
    assert torch.equal(got[1, 4], layer(x[1, 4:5])[0])  # a row's result does not depend on the batch


def test_nothing_is_packed_where_onednn_refuses_bf16(onednn, monkeypatch) -> None:
    def refuse(w: torch.Tensor) -> torch.Tensor:  # what torch raises on AVX2-only CPUs
        raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx_ne_convert")

    monkeypatch.setattr(packed_linear, "_pack", refuse)
    model = _model(torch.bfloat16)
    assert pack_cpu_linears(model) == 0 and all(type(m) is nn.Linear for m in model)
    assert packed_linear.warm_packed_linears(model) == 0
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    assert torch.equal(model(x), _plain(model, x))


def test_fp32_and_switched_off_stay_plain(monkeypatch) -> None:
    model = _model(torch.float32)
    assert pack_cpu_linears(model) == 0 and all(type(m) is nn.Linear for m in model)
    monkeypatch.setenv(packed_linear.ENV, "0")
    bf16 = _model(torch.bfloat16)
    assert pack_cpu_linears(bf16) == 0 and all(type(m) is nn.Linear for m in bf16)


@needs_onednn_bf16
def test_not_packed_when_the_copies_would_crowd_memory() -> None:
    bf16 = _model(torch.bfloat16)
    weight_bytes = sum(m.weight.numel() * 2 for m in bf16)
    assert pack_cpu_linears(bf16, available_bytes=4 * weight_bytes - 4) == 0
    assert pack_cpu_linears(bf16, available_bytes=4 * weight_bytes) == 2


@needs_onednn_bf16
def test_warming_covers_each_row_count_within_the_budget(onednn) -> None:
    model = _model(torch.bfloat16)
    assert packed_linear.warm_packed_linears(model) == 0  # nothing packed: nothing to warm
    assert pack_cpu_linears(model) == 2
    per_row = 64 * 96 + 96 * 64
    assert packed_linear.warm_packed_linears(model) == packed_linear.WARM_ROWS + 12  # and 80, 96, ..., 256
    assert packed_linear.warm_packed_linears(model, rows=10, budget_macs=3 * per_row) == 2  # 1 + 2 rows fit
    assert packed_linear.warm_packed_linears(model, rows=10, budget_macs=per_row - 1) == 0
    assert packed_linear.warm_prefill_linears(model, 512) == 8  # the prompt buckets 288, 320, ..., 512
    assert packed_linear.warm_prefill_linears(model, 512, budget_macs=(288 + 320) * per_row) == 2
    assert packed_linear.warm_prefill_linears(model, 256) == 0
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    assert torch.equal(model(x), _plain(model, x))


@needs_tiles
def test_tiles_warm_only_the_prompt_buckets() -> None:
    model = _model(torch.bfloat16)
    assert pack_cpu_linears(model) == 2 and all(type(m) is TiledLinear for m in model)
    assert packed_linear.warm_packed_linears(model) == 0  # no oneDNN primitive below TILED_MAX_ROWS
    assert packed_linear.warm_prefill_linears(model, 1024) == 4  # 832, 896, 960, 1,024


@needs_onednn_bf16
@pytest.mark.parametrize("rows", [63, 65, 100, 256, 257, 300, 1650])
def test_rows_padded_to_their_bucket_change_no_row(onednn, rows: int) -> None:
    model = _model(torch.bfloat16)
    assert pack_cpu_linears(model) == 2
    x = torch.randn(rows, 64, dtype=torch.bfloat16)
    assert torch.equal(model(x), _plain(model, x))


@needs_onednn_bf16
def test_leading_dims_are_rows(onednn) -> None:
    model = _model(torch.bfloat16)
    assert pack_cpu_linears(model) == 2
    x = torch.randn(3, 100, 64, dtype=torch.bfloat16)
    assert torch.equal(model(x), _plain(model, x))


def test_buckets_are_few_and_tight() -> None:
    counts = {packed_linear.bucket_rows(n) for n in range(65, 4097)}
    assert len(counts) <= 44 and all(packed_linear.bucket_rows(n) >= n for n in range(1, 5000))
    assert max(packed_linear.bucket_rows(n) / n for n in range(257, 5000)) <= 1.125
