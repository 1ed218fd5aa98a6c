"""The AMX tile linear (flash_kernels/backends/cpu_linear.cpp) against the fp32 product: within one bf16
rounding step for every shape (partial row tiles, depth chunks and column blocks, bias or none), each row
independent of the batch, the same on 1 and 2 threads, and torch's AMX flash attention unchanged around it
(the tile configuration each leaves behind)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flash_kernels.backends import cpu_linear

pytestmark = pytest.mark.skipif(not cpu_linear.usable(), reason="needs AMX tiles and the extension")


def _case(m: int, k: int, n: int, bias: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen).bfloat16()
    w = (torch.randn(n, k, generator=gen) / k**0.5).bfloat16()
    b = torch.randn(n, generator=gen).bfloat16() if bias else None
    return x, w, b


def _within_one_step(got: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> None:
    exact = F.linear(x.float(), w.float(), None if b is None else b.float())
    assert got.dtype == torch.bfloat16 and got.shape == exact.shape
    bound = exact.abs() * 2**-7 + (x.float().abs() @ w.float().abs().T) * 2**-16
    assert bool(((got.float() - exact).abs() <= bound).all())


@pytest.mark.parametrize("m", [1, 5, 16, 17, 32, 33, 64, 100, 256, 700])
@pytest.mark.parametrize(("k", "n"), [(64, 32), (100, 70), (256, 512), (688, 256), (256, 2000)])
def test_matches_the_fp32_product(m: int, k: int, n: int) -> None:
    for bias in (False, True):
        x, w, b = _case(m, k, n, bias, seed=m + k + n)
        _within_one_step(cpu_linear.linear(x, cpu_linear.pack(w), n, b), x, w, b)


def test_rows_do_not_depend_on_the_batch_or_threads() -> None:
    x, w, b = _case(77, 688, 300, True)
    packed = cpu_linear.pack(w)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu_linear.linear(x, packed, 300, b)
        torch.set_num_threads(2)
        assert torch.equal(cpu_linear.linear(x, packed, 300, b), one)
    finally:
        torch.set_num_threads(threads)
    for rows in (slice(0, 1), slice(16, 33), slice(40, 77)):
        assert torch.equal(cpu_linear.linear(x[rows], packed, 300, b), one[rows])
    assert cpu_linear.linear(x[:0], packed, 300, b).shape == (0, 300)


def test_torchs_flash_attention_is_unchanged_around_it() -> None:
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 4, 300, 64, generator=gen).bfloat16() for _ in range(3))
    before = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x, w, _ = _case(33, 100, 70, False)
    for _ in range(3):
        cpu_linear.linear(x, cpu_linear.pack(w), 70, None)
        assert torch.equal(F.scaled_dot_product_attention(q, k, v, is_causal=True), before)


def test_bad_operands_are_refused() -> None:
    x, w, _ = _case(4, 64, 32, False)
    packed = cpu_linear.pack(w)
    with pytest.raises(RuntimeError, match="disagree"):
        cpu_linear.linear(x, packed, 70, None)  # n beyond the packed blocks
    with pytest.raises(RuntimeError, match="bf16"):
        cpu_linear.linear(x.float(), packed, 32, None)
