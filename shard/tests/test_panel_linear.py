"""fp32 CPU linears packed into panels (shard/layers/panel_linear.py): the kernel's result up to
PANEL_MAX_ROWS rows (within fp32 rounding of F.linear), F.linear's own above, leading dims as rows, the same
state_dict; bf16, the switches and a crowded memory leave them plain."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from flash_kernels.backends import cpu_panels
from shard.layers import packed_linear
from shard.layers.panel_linear import PANEL_MAX_ROWS, PanelLinear, pack_panel_linears

pytestmark = pytest.mark.skipif(not cpu_panels.usable(), reason="needs AVX2 + FMA and the extension")


def _model(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96, bias=False), nn.Linear(96, 40, bias=True)).to(dtype)


def _plain(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.linear(F.linear(x, model[0].weight), model[1].weight, model[1].bias)


def test_fp32_linears_run_the_panels_up_to_their_rows_and_f_linear_above() -> None:
    model = _model()
    keys = set(model.state_dict())
    assert pack_panel_linears(model) == 2 and all(type(m) is PanelLinear for m in model)
    assert set(model.state_dict()) == keys  # the packed copy is not part of the checkpoint
    with torch.inference_mode():
        for shape in [(1, 64), (7, 64), (PANEL_MAX_ROWS, 64), (2, 5, 64)]:
            x = torch.randn(shape)
            out = model(x)
            hidden = cpu_panels.linear(x.reshape(-1, 64), model[0].panels, 96, model[0].panel_bias)
            kernel = cpu_panels.linear(hidden, model[1].panels, 40, model[1].panel_bias)
            assert out.shape == (*shape[:-1], 40) and torch.equal(out.reshape(-1, 40), kernel)
            torch.testing.assert_close(out, _plain(model, x), rtol=1e-5, atol=1e-5)
        above = torch.randn(PANEL_MAX_ROWS + 1, 64)
        assert torch.equal(model(above), _plain(model, above))


@pytest.mark.parametrize("switch", [packed_linear.ENV, cpu_panels.ENV])
def test_bf16_and_switched_off_stay_plain(monkeypatch, switch: str) -> None:
    bf16 = _model(torch.bfloat16)
    assert pack_panel_linears(bf16) == 0 and all(type(m) is nn.Linear for m in bf16)
    monkeypatch.setenv(switch, "0")
    fp32 = _model()
    assert pack_panel_linears(fp32) == 0 and all(type(m) is nn.Linear for m in fp32)


def test_not_packed_when_the_copies_would_crowd_memory() -> None:
    weight_bytes = sum(m.weight.numel() * 4 for m in _model())
    assert pack_panel_linears(_model(), available_bytes=4 * weight_bytes - 4) == 0
    assert pack_panel_linears(_model(), available_bytes=4 * weight_bytes) == 2


def test_nothing_is_packed_where_the_kernel_is_off_the_product(monkeypatch) -> None:
    monkeypatch.setattr(cpu_panels, "linear", lambda x, panels, n, bias: torch.zeros(x.shape[0], n))
    model = _model()
    assert pack_panel_linears(model) == 0 and all(type(m) is nn.Linear for m in model)
