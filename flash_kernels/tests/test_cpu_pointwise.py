"""The fused elementwise ops (flash_kernels/backends/cpu_pointwise.cpp) against the torch ops they replace in
shard.layers (RoPE, SiLU(gate) * up, RMSNorm), bf16 and fp32: equal up to the order of fp32 operations (bf16: at
most one bf16 step apart, almost all elements identical; fp32: a few ulp); that the layers use them for bf16 and
fp32 only, and the switch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from flash_kernels.backends import cpu_decode, cpu_pointwise
from shard.layers.mlp import GatedMLP
from shard.layers.rmsnorm import RMSNorm
from shard.layers.rotary import Rotary, _rotate

BUILT = cpu_decode.load()
needs_kernels = pytest.mark.skipif(not BUILT, reason="no c++ / ninja: the torch ops run (test_cpu_decode)")


def _close(out: torch.Tensor, expected: torch.Tensor) -> None:
    assert out.dtype == expected.dtype and out.shape == expected.shape
    if out.dtype == torch.float32:
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        return
    torch.testing.assert_close(out.float(), expected.float(), rtol=1.6e-2, atol=1e-3)  # one bf16 step
    assert (out == expected).float().mean() > 0.99


DTYPES = pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])


@needs_kernels
@DTYPES
@pytest.mark.parametrize("rows", [1, 7, 300])
def test_ops_match_the_torch_ops(rows: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(rows)
    rot = Rotary(64, 4096, 10000.0)
    qkv = (torch.randn(rows, 8, 64, generator=gen) * 3).to(dtype)
    positions = torch.randint(0, 4096, (rows,), generator=gen)
    expected = _rotate(qkv[:, :6], rot.cos[positions].unsqueeze(1), rot.sin[positions].unsqueeze(1))
    _close(cpu_pointwise.rope(qkv[:, :6], positions, rot.cos, rot.sin), expected)  # a strided view of qkv
    gate_up = (torch.randn(rows, 2 * 96, generator=gen) * 3).to(dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    _close(cpu_pointwise.silu_mul(gate, up), F.silu(gate) * up)  # views of one fused output
    x, weight = (torch.randn(rows, 64, generator=gen) * 2).to(dtype), torch.randn(64, generator=gen).to(dtype)
    _close(cpu_pointwise.rms_norm(x, weight, 1e-5), weight * F.rms_norm(x.float(), (64,), eps=1e-5).to(dtype))


@needs_kernels
def test_a_position_outside_the_tables_is_refused() -> None:
    rot = Rotary(16, 8, 10000.0)
    with pytest.raises(RuntimeError, match="position out of range"):
        cpu_pointwise.rope(torch.zeros(1, 2, 16).bfloat16(), torch.tensor([8]), rot.cos, rot.sin)


@needs_kernels
def test_layers_use_them_for_bf16_and_fp32_only_and_the_switch_turns_them_off(monkeypatch) -> None:
    rot, mlp, norm = Rotary(16, 64, 10000.0), GatedMLP(32, 48), RMSNorm(32, 1e-6)
    positions = torch.arange(3)

    def ops(dtype: torch.dtype) -> set[str]:
        x = torch.randn(3, 32, dtype=dtype)
        with profile(activities=[ProfilerActivity.CPU]) as prof, torch.inference_mode():
            rot.rotate(positions, torch.randn(3, 2, 16, dtype=dtype))
            mlp.to(dtype)(x)
            norm.to(dtype)(x)
        return {e.key for e in prof.key_averages() if e.key.startswith("prism_kernels::")}

    fused = {"prism_kernels::rope", "prism_kernels::silu_mul", "prism_kernels::rms_norm"}
    assert ops(torch.bfloat16) == ops(torch.float32) == fused
    assert ops(torch.float16) == set()
    monkeypatch.setenv(cpu_pointwise.ENV, "0")
    assert ops(torch.bfloat16) == ops(torch.float32) == set()


def _pool(gen: torch.Generator, hk: int, d: int, dtype: torch.dtype = torch.bfloat16
          ) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple((torch.randn(6, 16, hk, d, generator=gen) * 2).to(dtype) for _ in range(2))


@needs_kernels
@DTYPES
@pytest.mark.parametrize("rows", [1, 7, 40])
def test_rope_store_kv_equals_rope_then_the_store(rows: int, dtype: torch.dtype) -> None:
    """Bit for bit the plain kernel and sdpa's store_kv (index_copy_), and within a bf16 step of the torch
    RoPE; pool slots other than the step's are left alone."""
    from flash_kernels.backends.sdpa import store_kv

    gen = torch.Generator().manual_seed(rows)
    h, hk, d = 4, 2, 64
    rot = Rotary(d, 4096, 10000.0)
    qkv = (torch.randn(rows, h + 2 * hk + 1, d, generator=gen) * 3).to(dtype)[:, : h + 2 * hk]  # rows strided
    positions = torch.randint(0, 4096, (rows,), generator=gen)
    slots = torch.randperm(6 * 16, generator=gen)[:rows]
    kc, vc = _pool(gen, hk, d, dtype)
    want_kc, want_vc = kc.clone(), vc.clone()
    qk = cpu_pointwise.rope(qkv[:, : h + hk], positions, rot.cos, rot.sin)
    store_kv(want_kc, want_vc, qk[:, h:], qkv[:, h + hk :], slots)
    q = cpu_pointwise.rope_store_kv(qkv, positions, rot.cos, rot.sin, kc, vc, slots)
    assert q.is_contiguous() and torch.equal(q, qk[:, :h])
    assert torch.equal(kc, want_kc) and torch.equal(vc, want_vc)
    expected = _rotate(qkv[:, : h + hk], rot.cos[positions].unsqueeze(1), rot.sin[positions].unsqueeze(1))
    _close(q, expected[:, :h])


@needs_kernels
def test_rope_store_kv_refuses_a_slot_outside_the_pool() -> None:
    rot, gen = Rotary(16, 8, 10000.0), torch.Generator().manual_seed(0)
    kc, vc = _pool(gen, 1, 16)
    with pytest.raises(RuntimeError, match="slot out of range"):
        cpu_pointwise.rope_store_kv(torch.zeros(1, 4, 16).bfloat16(), torch.tensor([0]), rot.cos, rot.sin, kc, vc,
                                    torch.tensor([6 * 16]))


@needs_kernels
@DTYPES
@pytest.mark.parametrize("rows", [1, 7, 300])
def test_fused_add_norm_and_gated_silu_equal_the_plain_ops(rows: int, dtype: torch.dtype) -> None:
    """add_rms_norm: the torch add (bit for bit) then rms_norm; gated_silu: silu_mul of the halves (bit for
    bit)."""
    gen = torch.Generator().manual_seed(rows)
    x, residual = ((torch.randn(rows, 96, generator=gen) * 2).to(dtype) for _ in range(2))
    weight = torch.randn(96, generator=gen).to(dtype)
    total = residual + x
    out = cpu_pointwise.add_rms_norm(x, residual, weight, 1e-5)
    assert torch.equal(residual, total)  # updated in place
    assert torch.equal(out, cpu_pointwise.rms_norm(total, weight, 1e-5))
    _close(out, weight * F.rms_norm(total.float(), (96,), eps=1e-5).to(dtype))
    gate_up = (torch.randn(rows, 2 * 88, generator=gen) * 3).to(dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    assert torch.equal(cpu_pointwise.gated_silu(gate_up), cpu_pointwise.silu_mul(gate, up))
