"""config.json variations real checkpoints use: the shard's fp32 logits equal transformers' for the same tiny
random weights, and features it does not implement are refused at load, naming the field."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from shard.batch import RequestState
from shard.factory import build_runner
from shard.inputs import build_step_inputs, to_device
from shard.loader import decoder_config, safetensors_files
from shard.models.llama import DecoderConfig
from shard.sampling import NextTokenChooser, SamplingParams, StoppingCriteria
from shard.tests.helpers import make_config

SHAPE = dict(
    vocab_size=1024, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, bos_token_id=0, eos_token_id=1, pad_token_id=2,
    initializer_range=0.2,
)
IDS = list(range(3, 40))  # 37 tokens: three blocks of 16


def _hf_folder(tiny_llama: Path, out: Path, arch: str, **config: object) -> Path:
    """A transformers-saved random model (norm weights and biases perturbed too) with the demo tokenizer."""
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen3Config

    classes = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen3": Qwen3Config}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(classes[arch](**{**SHAPE, **config}), dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama / name, out / name)
    return out


def _logits_vs_transformers(
    folder: Path, rope_factor: float | None = None, hf_folder: Path | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(shard's fp32 logits of IDS, cold prefill through the ModelRunner's model and pool, with ``rope_factor``;
    transformers' of ``hf_folder``, by default the same folder)."""
    from transformers import AutoModelForCausalLM

    runner = build_runner(make_config(folder, num_blocks=8, rope_factor=rope_factor))
    bs = runner.kv.block_size
    blocks = [1, 2, 3]
    slots = [b * bs + o for b in blocks for o in range(bs)]
    r = RequestState(0, IDS, len(IDS), blocks, slots, 0, NextTokenChooser(SamplingParams()),
                     StoppingCriteria(frozenset(), 1))
    tokens, meta = to_device(build_step_inputs([r]), runner.loaded.device, bs)
    hf = AutoModelForCausalLM.from_pretrained(hf_folder or folder, dtype=torch.float32, attn_implementation="eager")
    with torch.inference_mode():
        ours = runner.model.logits(runner.model(tokens, meta, runner.kv.layers))
        return ours, hf(torch.tensor([IDS])).logits[0].float()


@pytest.mark.parametrize(
    "arch, config",
    [
        ("llama", {"attention_bias": True, "mlp_bias": True}),  # o_proj and MLP biases were dropped
        ("qwen3", {"attention_bias": True, "head_dim": 32}),  # Qwen3's attention_bias includes o_proj
        ("llama", {"tie_word_embeddings": True, "num_key_value_heads": 1, "head_dim": 32}),
        ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
        ("llama", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}}),
        ("qwen3", {"rope_scaling": {"type": "yarn", "factor": 8.0}}),  # original context: max_position_embeddings
        ("llama", {"rope_scaling": {"type": "dynamic", "factor": 2.0}}),  # plain RoPE within the context
    ],
)
def test_logits_equal_transformers(tiny_llama: Path, tmp_path: Path, arch: str, config: dict) -> None:
    ours, theirs = _logits_vs_transformers(_hf_folder(tiny_llama, tmp_path / "m", arch, **config))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_a_tied_head_is_the_embedding_whatever_it_stores(tiny_llama: Path, tmp_path: Path) -> None:
    """tie_word_embeddings with an lm_head.weight in the file (merged / converted checkpoints): transformers
    ties the head to the embedding; loading the stored head overwrote the shared embedding too."""
    from safetensors.torch import load_file, save_file

    folder = _hf_folder(tiny_llama, tmp_path / "m", "qwen3", tie_word_embeddings=True)
    weights = load_file(str(folder / "model.safetensors"))
    weights["lm_head.weight"] = torch.randn_like(weights["model.embed_tokens.weight"])
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    ours, theirs = _logits_vs_transformers(folder)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


BASE = {"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2}


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("hidden_act", "gelu", "unsupported hidden_act 'gelu'"),
        ("quantization_config", {"quant_method": "fp8"}, r"unsupported quantization_config .*'fp8'"),
        ("rope_scaling", {"rope_type": "longrope", "factor": 4.0}, "unsupported rope_scaling type 'longrope'"),
    ],
)
def test_unimplemented_config_fields_are_refused(field: str, value: object, message: str) -> None:
    from shard.models import model_class

    with pytest.raises(ValueError, match=message):
        model_class(["LlamaForCausalLM"]).from_hf_config({**BASE, field: value}, None)


@pytest.mark.parametrize(
    "scaling, positions",
    [
        (None, 4096),
        ({"rope_type": "linear", "factor": 2.0}, 8192),
        ({"rope_type": "yarn", "factor": 4.0}, 16384),  # the original context is max_position_embeddings
        ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}, 4096),
        ({"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 512}, 4096),  # given extended
        ({"rope_type": "dynamic", "factor": 4.0}, 4096),  # past it, dynamic NTK would rescale every position
    ],
)
def test_a_scaled_rope_extends_the_usable_positions(scaling: dict | None, positions: int) -> None:
    cfg = {**BASE, "max_position_embeddings": 4096, "rope_scaling": scaling}
    assert DecoderConfig.from_hf(cfg).max_positions == positions


def test_dynamic_rope_is_served_within_max_position_embeddings_with_a_warning(
    tiny_llama: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _hf_folder(tiny_llama, tmp_path / "m", "llama", rope_scaling={"type": "dynamic", "factor": 2.0})
    with caplog.at_level(logging.WARNING, logger="shard.loader"):
        runner = build_runner(make_config(folder, num_blocks=8))
    assert runner.model.config.max_positions == SHAPE["max_position_embeddings"]
    assert "rope_scaling dynamic" in caplog.text


def test_tgis_rope_factor_is_linear_scaling_replacing_the_configs(tiny_llama: Path, tmp_path: Path) -> None:
    plain = _hf_folder(tiny_llama, tmp_path / "plain", "llama", rope_scaling={"rope_type": "yarn", "factor": 2.0})
    linear = tmp_path / "linear"
    shutil.copytree(plain, linear)
    cfg = json.loads((linear / "config.json").read_text())
    (linear / "config.json").write_text(json.dumps({**cfg, "rope_scaling": {"rope_type": "linear", "factor": 3.0}}))
    ours, theirs = _logits_vs_transformers(plain, rope_factor=3.0, hf_folder=linear)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert decoder_config(plain, rope_factor=3.0).max_positions == 3 * SHAPE["max_position_embeddings"]


def test_a_sliding_window_cap_is_logged_at_load(
    tiny_llama: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _hf_folder(tiny_llama, tmp_path / "m", "mistral", sliding_window=24)
    assert DecoderConfig.from_hf(json.loads((folder / "config.json").read_text())).max_positions == 24
    with caplog.at_level(logging.WARNING, logger="shard.loader"):
        runner = build_runner(make_config(folder, num_blocks=8))
    assert runner.loaded.max_position_embeddings == 24
    assert "sliding_window 24 is below max_position_embeddings 256" in caplog.text


def test_weight_files_are_those_transformers_reads(tmp_path: Path) -> None:
    """Mistral folders hold consolidated.safetensors beside the indexed model-*.safetensors: not read."""
    names = [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)] + ["consolidated.safetensors"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    index = {"weight_map": {"a": names[0], "b": names[1], "c": names[0]}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert safetensors_files(tmp_path) == [tmp_path / names[0], tmp_path / names[1]]
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert safetensors_files(tmp_path) == [tmp_path / "model.safetensors"]
