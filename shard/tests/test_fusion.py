"""Fused q/k/v and gate/up projections: bit-identical outputs, unchanged state_dict, no weight copies."""

from __future__ import annotations

import pytest
import torch

from flash_kernels.api import get_backend
from shard.layers.attention import AttentionMetadata, AttentionShape, PagedAttention
from shard.layers.fusion import fuse_projections
from shard.layers.mlp import GatedMLP
from shard.layers.rotary import Rotary


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias,qk_norm", [(False, None), (True, None), (False, 1e-6)])
def test_fused_attention_and_mlp_are_bit_identical(
    dtype: torch.dtype, bias: bool, qk_norm: float | None
) -> None:
    torch.manual_seed(0)
    shape = AttentionShape(64, 4, 2, 16, bias, qk_norm)
    attn = PagedAttention(shape, Rotary(16, 64, 10000.0), get_backend("sdpa")).to(dtype)
    mlp = GatedMLP(64, 96, bias=bias).to(dtype)
    for p in [*attn.parameters(), *mlp.parameters()]:
        p.data.normal_()
    n, block = 5, 16
    x = torch.randn(n, 64, dtype=dtype)
    meta = AttentionMetadata(
        torch.arange(n), torch.arange(n) + block, torch.tensor([[1]], dtype=torch.int32),
        torch.tensor([n], dtype=torch.int32), torch.tensor([0, n], dtype=torch.int32), n, n,
    )

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        kv = (torch.zeros(2, block, 2, 16, dtype=dtype), torch.zeros(2, block, 2, 16, dtype=dtype))
        with torch.inference_mode():
            return attn(x, meta, kv), mlp(x)

    before, keys = run(), set(attn.state_dict()) | {f"mlp.{k}" for k in mlp.state_dict()}
    assert fuse_projections(attn) == 1 and fuse_projections(mlp) == 1
    after = run()
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert set(attn.state_dict()) | {f"mlp.{k}" for k in mlp.state_dict()} == keys
    fused = attn.qkv_proj.weight
    assert attn.q_proj.weight.data_ptr() == fused.data_ptr()  # the parts are views: no second copy
    assert attn.v_proj.weight.data_ptr() == fused[-attn.v_proj.out_features :].data_ptr()


def _tiny_llama(dtype: torch.dtype):
    from shard.models.llama import DecoderConfig, LlamaForCausalLM

    c = DecoderConfig(vocab_size=50, hidden=64, intermediate=96, layers=3, heads=4, kv_heads=2, head_dim=16,
                      rms_eps=1e-6, rope_theta=10000.0, rope_scaling=None, max_positions=64, tie_embeddings=False)
    torch.manual_seed(1)
    model = LlamaForCausalLM(c, get_backend("sdpa")).to(dtype)
    for p in model.parameters():
        p.data.normal_(0, 0.5)
    fuse_projections(model)
    return model.requires_grad_(False)


def _hf_order_forward(model, ids: torch.Tensor, meta: AttentionMetadata, kv_caches) -> torch.Tensor:
    """The decoder as HF spells it, with every fused-pass op unfused."""
    x = model.model.embed_tokens(ids)
    for layer, kv in zip(model.model.layers, kv_caches):
        x = x + layer.self_attn(layer.input_layernorm(x), meta, kv)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.model.norm(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_decoder_with_fused_passes_equals_it_unfused(dtype: torch.dtype, monkeypatch) -> None:
    """The residual add carried into the next norm and, on a CPU, RoPE with the KV store and SiLU * up
    on the fused gate/up output: hidden states and pool bit-identical to the HF-order forward on the plain ops,
    for a prefill and then a decode step over it."""
    from flash_kernels.backends import cpu_pointwise
    from torch.profiler import ProfilerActivity, profile

    model, block = _tiny_llama(dtype), 16
    steps = [(torch.arange(5), 5, torch.tensor([0, 5], dtype=torch.int32)), (torch.tensor([5]), 6, None)]

    def run(forward) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        kv = [(torch.zeros(2, block, 2, 16, dtype=dtype), torch.zeros(2, block, 2, 16, dtype=dtype))
              for _ in range(3)]
        outs = []
        for positions, length, cu in steps:
            meta = AttentionMetadata(positions, positions + block, torch.tensor([[1]], dtype=torch.int32),
                                     torch.tensor([length], dtype=torch.int32), cu, len(positions), length)
            with torch.inference_mode():
                outs.append(forward(model, (positions * 7) % 50, meta, kv))
        return outs, [t for pair in kv for t in pair]

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fused = run(lambda m, *args: m(*args))
    monkeypatch.setattr(cpu_pointwise, "store_usable", lambda *args: False)
    monkeypatch.setattr(cpu_pointwise, "gated_silu", lambda gu: cpu_pointwise.silu_mul(*gu.chunk(2, dim=-1)))
    plain = run(_hf_order_forward)
    assert all(torch.equal(a, b) for a, b in zip(fused[0] + fused[1], plain[0] + plain[1]))
    ops = {e.key for e in prof.key_averages() if e.key.startswith("prism_kernels::")}
    fused_ops = {"prism_kernels::rope_store_kv", "prism_kernels::gated_silu", "prism_kernels::add_rms_norm"}
    if cpu_pointwise.usable(fused[0][0]):
        assert ops >= fused_ops
    else:
        assert not ops & fused_ops
