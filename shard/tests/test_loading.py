"""Demo model folders (deterministic, loadable by transformers) and the loader's start-up errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flash_kernels.api import get_backend
from shard.demo_model import build_demo_model
from shard.loader import load_model


def test_same_arguments_give_identical_files(tiny_llama: Path, tmp_path: Path) -> None:
    again = build_demo_model(tmp_path / "again", "llama", "tiny")
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ):
        assert (again / name).read_bytes() == (tiny_llama / name).read_bytes(), name


def test_folder_is_a_real_hf_checkpoint(tiny_qwen3: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    cfg = model.config
    assert (
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.max_position_embeddings,
    ) == (64, 4, 2, 4096)
    assert 900 <= cfg.vocab_size <= 1100
    assert tok("hi").input_ids[0] == tok.bos_token_id
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<s><|user|>\nhi</s>\n<|assistant|>\n"


def test_unsupported_architecture_names_itself_and_the_supported(tiny_llama: Path, tmp_path: Path) -> None:
    folder = tmp_path / "gpt2"
    folder.mkdir()
    for f in tiny_llama.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel.*LlamaForCausalLM.*Qwen3ForCausalLM"):
        load_model(folder, get_backend("reference"), torch.float32, torch.device("cpu"))
    out = subprocess.run(
        [sys.executable, "-m", "shard.cli", "serve", str(folder), "--uds-path", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RANK": "0"},
    )
    assert out.returncode != 0 and "unsupported architecture ['GPT2LMHeadModel']" in out.stderr


def test_demo_model_cli_builds_qwen3(tmp_path: Path) -> None:
    from shard.demo_model import main

    main([str(tmp_path / "q"), "--arch", "qwen3", "--size", "tiny"])
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3ForCausalLM"] and cfg["tie_word_embeddings"] is True


def test_an_active_sliding_window_caps_the_positions() -> None:
    from shard.models.llama import DecoderConfig

    base = {
        "vocab_size": 10,
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 32768,
    }
    assert DecoderConfig.from_hf({**base, "sliding_window": 4096}).max_positions == 4096  # Mistral v0.1
    assert (
        DecoderConfig.from_hf({**base, "sliding_window": 4096, "use_sliding_window": False}).max_positions
        == 32768
    )  # Qwen2 lists a window it does not use
    assert DecoderConfig.from_hf({**base, "sliding_window": None}).max_positions == 32768


def test_dummy_load_format_needs_no_weights(tmp_path: Path) -> None:
    """--load-format dummy (vLLM's name): a config-only folder (prism-demo-model --config-only) is served with
    random weights of the config's shapes, in the asked dtype; a checkpoint load of it names what is missing."""
    folder = build_demo_model(tmp_path / "m", "llama", "tiny", weights=False)
    assert not list(folder.glob("*.safetensors"))
    backend = get_backend("reference")
    loaded = load_model(folder, backend, torch.bfloat16, torch.device("cpu"), dummy=True)
    params = list(loaded.model.parameters())
    assert params and all(p.dtype == torch.bfloat16 for p in params)
    assert loaded.model.config.vocab_size == json.loads((folder / "config.json").read_text())["vocab_size"]
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_model(folder, backend, torch.float32, torch.device("cpu"))


def test_the_8b_size_keeps_llama3_shapes_over_a_small_tokenizer(tmp_path: Path) -> None:
    cfg = json.loads((build_demo_model(tmp_path / "m8", "llama", "8b", weights=False) / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_key_value_heads"], cfg["vocab_size"]) == (
        4096, 32, 8, 128256
    )
