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
