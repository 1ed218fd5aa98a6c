"""Our shard's greedy tokens equal transformers' ``generate`` for the same tiny random Llama and Qwen3."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from proto.generate.v3 import generate_pb2 as pb
from shard.bench_vs_hf import transformers_greedy
from shard.factory import build_service
from shard.tests.helpers import Blocks, batch, make_config, request, run_to_end, token_ids

PROMPTS = [
    "The cache keeps",
    "Hello! How are you today? I am fine",
    "A",
    "Numbers are written with digits: 0 1 2",
]
NEW_TOKENS = 20


def reference_tokens(model_dir: Path, prompts: list[str]) -> list[list[int]]:
    return transformers_greedy(model_dir, prompts, NEW_TOKENS)


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
async def test_batched_greedy_equals_transformers(tiny_model: Path, backend: str) -> None:
    await assert_batched_greedy_equals_transformers(
        tiny_model, build_service(make_config(tiny_model, attention_backend=backend))
    )


async def assert_batched_greedy_equals_transformers(tiny_model: Path, service) -> None:  # noqa: ANN001
    """PROMPTS as one batch through ``service``, run to the end: each continuation equals transformers'."""
    blocks = Blocks()
    reqs = [request(i, p, *blocks.take(40 + NEW_TOKENS), max_new=NEW_TOKENS) for i, p in enumerate(PROMPTS)]
    got = await run_to_end(service, pb.PrefillRequest(batch=batch(0, reqs)))
    expected = reference_tokens(tiny_model, PROMPTS)
    for i, prompt in enumerate(PROMPTS):
        assert token_ids(got[i]) == expected[i], prompt
    assert all(len(token_ids(got[i])) == NEW_TOKENS for i in got)


def _qwen2_from(llama: Path, out: Path) -> Path:
    """A Qwen2 folder: the tiny Llama's weights plus random q/k/v biases (Qwen2's difference)."""
    import json

    from safetensors.torch import load_file, save_file

    out.mkdir()
    for f in llama.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", use_sliding_window=False)
    (out / "config.json").write_text(json.dumps(cfg))
    weights = load_file(str(out / "model.safetensors"))
    gen = torch.Generator().manual_seed(3)
    for name in [n for n in weights if n.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight"))]:
        weights[name.replace(".weight", ".bias")] = torch.randn(weights[name].shape[0], generator=gen) * 0.5
    save_file(weights, str(out / "model.safetensors"))
    return out


async def test_qwen2_biases_match_transformers(tiny_llama: Path, tmp_path: Path) -> None:
    folder = _qwen2_from(tiny_llama, tmp_path / "qwen2")
    service = build_service(make_config(folder))
    blocks = Blocks()
    reqs = [
        request(i, p, *blocks.take(40 + NEW_TOKENS), max_new=NEW_TOKENS) for i, p in enumerate(PROMPTS[:2])
    ]
    got = await run_to_end(service, pb.PrefillRequest(batch=batch(0, reqs)))
    assert [token_ids(got[i]) for i in range(2)] == reference_tokens(folder, PROMPTS[:2])


@pytest.mark.parametrize(
    "scaling, theta, max_positions",
    [
        ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}, 500000.0, 131072),
        ({"rope_type": "linear", "factor": 4.0}, 10000.0, 4096),
        ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}, 1000000.0, 32768),
        ({"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "beta_fast": 32,
          "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.707}, 10000.0, 163840),  # DeepSeek's shape
        ({"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 2048, "attention_factor": 0.9,
          "truncate": False}, 10000.0, 4096),
        ({"rope_type": "yarn", "factor": 1.0, "original_max_position_embeddings": 1000}, 50000.0, 1000),
    ],
)
def test_rope_scaling_matches_transformers(scaling: dict, theta: float, max_positions: int) -> None:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from shard.layers.rotary import rope_parameters

    cfg = LlamaConfig(
        hidden_size=512, num_attention_heads=4, rope_theta=theta, rope_scaling=scaling,
        max_position_embeddings=max_positions,
    )
    expected, attention_factor = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](cfg, "cpu")
    inv, factor = rope_parameters(128, theta, scaling)
    assert torch.allclose(inv, expected.float(), rtol=1e-6)
    assert factor == pytest.approx(attention_factor, rel=1e-12)
