"""The direct CPU layer path (shard/layers/cpu_direct.py), bf16 on AMX tiles and fp32 on torch's linear: hidden
states and KV pool bit-identical to the modules' path for cold and cached prompt pieces, decode steps and mixed
steps, with the compiled kernels and through the backend; the attention each step takes; attached only to models
whose every layer it mirrors."""

from __future__ import annotations

import pytest
import torch

from flash_kernels.api import get_backend
from flash_kernels.backends import cpu_decode, cpu_linear, cpu_panels, cpu_prefill
from shard.layers import cpu_direct
from shard.layers.attention import AttentionMetadata
from shard.layers.fusion import fuse_projections
from shard.layers.packed_linear import TILED_MAX_ROWS, pack_cpu_linears
from shard.layers.panel_linear import PANEL_MAX_ROWS, pack_panel_linears
from shard.models.llama import DecoderConfig, LlamaForCausalLM

needs_tiles = pytest.mark.skipif(not cpu_linear.usable(), reason="needs a CPU with AMX tiles")
needs_kernels = pytest.mark.skipif(not cpu_decode.load(), reason="no c++ / ninja: the modules' torch ops run")
# bf16 runs on AMX tiles only; fp32 wherever the kernels build
DTYPES = pytest.mark.parametrize("dtype", [pytest.param(torch.bfloat16, marks=needs_tiles),
                                           pytest.param(torch.float32, marks=needs_kernels)])
BLOCK, BLOCKS = 16, 128


def _model(dtype: torch.dtype = torch.bfloat16, qk_norm: bool = False, head_dim: int = 64
           ) -> LlamaForCausalLM:
    c = DecoderConfig(vocab_size=300, hidden=256, intermediate=320, layers=2, heads=4, kv_heads=2,
                      head_dim=head_dim, rms_eps=1e-6, rope_theta=10000.0, rope_scaling=None,
                      max_positions=1024, tie_embeddings=False, qk_norm=qk_norm)
    torch.manual_seed(0)
    model = LlamaForCausalLM(c, get_backend("sdpa")).to(dtype)
    for p in model.parameters():
        p.data.normal_(0, 0.2)
    for m in model.modules():
        if hasattr(m, "cos"):
            m.float()
    model.requires_grad_(False)
    fuse_projections(model)
    pack_cpu_linears(model)
    pack_panel_linears(model)
    return model


def _meta(pieces: list[tuple[int, int]], tables: list[list[int]]) -> tuple[torch.Tensor, AttentionMetadata]:
    """(cached, new) tokens per request -> token ids and metadata; request i's blocks are ``tables[i]``."""
    positions, slots, ids = [], [], []
    for (cached, new), table in zip(pieces, tables):
        positions += range(cached, cached + new)
        slots += [table[p // BLOCK] * BLOCK + p % BLOCK for p in range(cached, cached + new)]
        ids += [(7 * p + len(table)) % 300 for p in range(cached, cached + new)]
    news = [new for _, new in pieces]
    cu = torch.tensor([0] + news, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    decode = all(new == 1 for new in news)
    meta = AttentionMetadata(
        torch.tensor(positions), torch.tensor(slots), torch.tensor(tables, dtype=torch.int32),
        torch.tensor([c + n for c, n in pieces], dtype=torch.int32), None if decode else cu, max(news),
        max(c + n for c, n in pieces), min(news))
    return torch.tensor(ids), meta


def _run_both(model: LlamaForCausalLM, ids: torch.Tensor, meta: AttentionMetadata, kv: list) -> None:
    """One step on each path over copies of the pool; asserts equal hidden states and pools, and leaves the
    direct path's pool in ``kv``."""
    outs, pools = [], []
    for on in (False, True):
        cpu_direct.set_enabled(on)
        pool = [(k.clone(), v.clone()) for k, v in kv]
        with torch.inference_mode():
            outs.append(model(ids, meta, pool))
        pools.append(pool)
    cpu_direct.set_enabled(True)
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(a, b) for pa, pb in zip(*pools) for a, b in zip(pa, pb))
    kv[:] = pools[1]


@DTYPES
@pytest.mark.parametrize("head_dim", [64, 16])  # 16: no compiled prefill form (torch's flash kernel)
def test_direct_layers_equal_the_modules_bit_for_bit(head_dim: int, dtype: torch.dtype) -> None:
    model = _model(dtype, head_dim=head_dim)
    assert cpu_direct.attach(model) == 2
    kv = [(torch.zeros(BLOCKS, BLOCK, 2, head_dim, dtype=dtype),
           torch.zeros(BLOCKS, BLOCK, 2, head_dim, dtype=dtype)) for _ in range(2)]
    a, b, c, long = (list(range(first, first + 20)) for first in (1, 21, 41, 61))  # block tables
    long += list(range(81, 101))
    steps = [
        ([(0, 200), (0, 37)], [a, b]),  # cold prompts (the first layer's norm has no residual yet)
        ([(200, 1), (37, 1)], [a, b]),  # decode
        ([(0, 150), (150, 90)], [a, b]),  # a cold prompt beside a piece after 150 cached tokens
        ([(240, 1), (201, 1), (38, 1)], [a, b, c]),
        ([(241, 1), (0, 30), (39, 1)], [a, b, c]),  # decodes beside a prompt piece: the backend attends
        ([(0, 60)], [a]),  # one cold prompt, one piece after its prefix (the backend's one-request paths)
        ([(60, 30)], [a]),
        ([(0, 530)], [long]),  # rows padded for torch's flash kernel (sdpa.PAD_MIN_ROWS): a strided result
    ]
    for pieces, tables in steps:
        ids, meta = _meta(pieces, tables)
        limit = model.direct_layers[0].max_rows  # fp32 panels: 530 rows take the modules' path (F.linear)
        taken = cpu_direct.step_attention(model, model.model.embed_tokens(ids), meta) is not None
        assert taken == (limit is None or len(ids) <= limit)
        _run_both(model, ids, meta, kv)


@needs_tiles
def test_the_kernel_each_step_attends_with_and_the_steps_left_to_the_modules() -> None:
    model = _model()
    cpu_direct.attach(model)
    x = torch.zeros(3, 256, dtype=torch.bfloat16)
    _, pieces = _meta([(0, 3)], [[1]])
    assert cpu_direct.step_attention(model, x, pieces) is cpu_direct._prefill
    assert cpu_direct.step_attention(model, x, _meta([(5, 1)], [[1]])[1]) is cpu_direct._decode
    _, mixed = _meta([(10, 1), (0, 2)], [[1], [2]])  # a one-token piece beside a longer one: the backend's
    unknown = AttentionMetadata(*[getattr(pieces, f) for f in ("positions", "slots", "block_tables",
                                                               "seqlens_k", "cu_seqlens_q", "max_seqlen_q",
                                                               "max_seqlen_k")])  # min_seqlen_q not known
    for meta in (mixed, unknown):
        attend = cpu_direct.step_attention(model, x, meta)
        assert attend not in (None, cpu_direct._prefill, cpu_direct._decode)
    rows = torch.zeros(TILED_MAX_ROWS + 1, 256, dtype=torch.bfloat16)
    _, large = _meta([(0, TILED_MAX_ROWS + 1)], [list(range(1, 50))])
    assert cpu_direct.step_attention(model, rows, large) is None  # F.linear above the tiles' rows
    cpu_direct.set_enabled(False)
    try:
        assert cpu_direct.step_attention(model, x, _meta([(0, 3)], [[1]])[1]) is None
    finally:
        cpu_direct.set_enabled(True)


@needs_kernels
@pytest.mark.parametrize("panels", [True, False])
def test_fp32_steps_attend_with_the_decode_kernel_or_the_backend_within_the_panels_rows(
    panels: bool, monkeypatch
) -> None:
    """fp32 prompt steps attend with the compiled prefill kernel where its AVX2 form built (else through the
    backend); with panel linears, steps above their rows take the modules' path (F.linear there); plain linears
    take any rows."""
    if not panels:
        monkeypatch.setenv(cpu_panels.ENV, "0")
    model = _model(torch.float32)
    assert cpu_direct.attach(model) == 2
    assert cpu_direct.step_attention(model, torch.zeros(1, 256), _meta([(5, 1)], [[1]])[1]) is cpu_direct._decode
    blocks = list(range(1, PANEL_MAX_ROWS // BLOCK + 3))
    _, prompt = _meta([(0, PANEL_MAX_ROWS)], [blocks])
    attend = cpu_direct.step_attention(model, torch.zeros(PANEL_MAX_ROWS, 256), prompt)
    avx2 = cpu_prefill.form(2, 64, torch.float32) == "avx2"
    assert attend is cpu_direct._prefill if avx2 else attend not in (None, cpu_direct._prefill, cpu_direct._decode)
    _, large = _meta([(0, PANEL_MAX_ROWS + 1)], [blocks])
    attend = cpu_direct.step_attention(model, torch.zeros(PANEL_MAX_ROWS + 1, 256), large)
    assert (attend is None) == (panels and cpu_panels.usable())


def test_attached_only_where_every_layer_is_mirrored() -> None:
    half = _model(torch.float16)  # no fused pointwise ops for fp16
    assert cpu_direct.attach(half) == 0 and half.direct_layers is None
    assert cpu_direct.step_attention(half, torch.zeros(1, 256).half(), _meta([(0, 1)], [[1]])[1]) is None
    qk_norm = _model(torch.float32, qk_norm=True)  # Qwen3's per-head norms: not mirrored
    assert cpu_direct.attach(qk_norm) == 0 and qk_norm.direct_layers is None
    bf16 = _model()  # bf16 projections only on AMX tiles (oneDNN's packed ones are not mirrored)
    assert cpu_direct.attach(bf16) == (2 if cpu_linear.usable() else 0)
