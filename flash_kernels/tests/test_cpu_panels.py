"""The fp32 panel linear (flash_kernels/backends/cpu_panels.cpp) against the float64 product: within fp32
rounding for every shape (partial row blocks, a partial last panel, bias or none, strided rows), each row
independent of the batch and of the thread count, bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flash_kernels.backends import cpu_panels

pytestmark = pytest.mark.skipif(not cpu_panels.usable(), reason="needs AVX2 + FMA and the extension")


def _case(m: int, k: int, n: int, bias: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen)
    w = torch.randn(n, k, generator=gen) / k**0.5
    b = torch.randn(n, generator=gen) if bias else None
    return x, w, b


def _run(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    panels, padded_bias = cpu_panels.pack(w, b)
    return cpu_panels.linear(x, panels, w.shape[0], padded_bias)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 6, 7, 13, 32, 33, 256])
@pytest.mark.parametrize(("k", "n"), [(64, 32), (100, 70), (256, 512), (688, 256), (256, 2000), (7, 1)])
def test_matches_the_product_within_fp32_rounding(m: int, k: int, n: int) -> None:
    for bias in (False, True):
        x, w, b = _case(m, k, n, bias, seed=m + k + n)
        got = _run(x, w, b)
        exact = F.linear(x.double(), w.double(), None if b is None else b.double())
        assert got.dtype == torch.float32 and got.shape == (m, n)
        # a sum of k products rounded in fp32: a few ulp of the terms' magnitude
        bound = (x.double().abs() @ w.double().abs().T + (0 if b is None else b.double().abs())) * 2**-19
        assert bool(((got.double() - exact).abs() <= bound).all())


def test_rows_do_not_depend_on_the_batch_the_threads_or_the_row_stride() -> None:
    x, w, b = _case(45, 256, 200, True, seed=3)
    whole = _run(x, w, b)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.equal(_run(x, w, b), whole)
    finally:
        torch.set_num_threads(threads)
    for rows in (slice(0, 1), slice(7, 8), slice(10, 15), slice(40, 45)):
        assert torch.equal(_run(x[rows], w, b), whole[rows])
    wide = torch.cat([x, torch.randn(45, 9)], dim=1)[:, :256]  # rows strided, as a view of a wider output
    assert torch.equal(_run(wide, w, b), whole)


def test_pack_pads_the_last_panel_and_the_bias() -> None:
    w, b = torch.arange(20 * 3, dtype=torch.float32).view(20, 3), torch.arange(20, dtype=torch.float32)
    panels, bias = cpu_panels.pack(w, b)
    assert panels.shape == (2, 3, 16) and bias.shape == (32,)
    assert torch.equal(panels[1, :, :4], w[16:].T) and not panels[1, :, 4:].any() and not bias[20:].any()
    assert cpu_panels.pack(w)[1].numel() == 0


def test_bad_shapes_are_refused() -> None:
    panels, bias = cpu_panels.pack(torch.randn(40, 8))
    with pytest.raises(RuntimeError, match="panels"):
        cpu_panels.linear(torch.randn(2, 9), panels, 40, bias)
    with pytest.raises(RuntimeError, match="within the panels"):
        cpu_panels.linear(torch.randn(2, 8), panels, 60, bias)
