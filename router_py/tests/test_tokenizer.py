"""Tokenizer loading, byte offsets, truncation and chat templates."""

from __future__ import annotations

import json

import pytest

from router_py.chat_template import ChatTemplateError
from router_py.tokenizer import Tokenizer, truncate_ids


def test_loads_special_tokens_from_config(tokenizer: Tokenizer) -> None:
    assert tokenizer.bos_token == "<s>" and tokenizer.eos_token == "</s>"
    assert tokenizer.eos_token_id == 1 and tokenizer.has_chat_template


def test_encode_decode_round_trip(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("hello world")
    assert ids[0] == 0 and tokenizer.encode("hello world", add_special_tokens=False) == ids[1:]
    assert tokenizer.decode(ids) == "hello world"
    assert tokenizer.decode(ids, skip_special_tokens=False) == "<s>hello world"


@pytest.mark.parametrize("text", ["", "hello world", "wörld ünïcode \U0001f600", "  spaced\n\ttabs  ", "x" * 3000,
                                  "<s>special</s> in text", "\x00\x7f control"])
@pytest.mark.parametrize("special", [True, False])
def test_encode_ids_equal_the_tokenizers_encode(tokenizer: Tokenizer, text: str, special: bool) -> None:
    assert tokenizer.encode(text, special) == tokenizer._hf.encode(text, add_special_tokens=special).ids


def test_offsets_are_utf8_bytes(tokenizer: Tokenizer) -> None:
    text = "wörld ünïcode"
    tokens = tokenizer.encode_with_offsets(text, add_special_tokens=False)
    raw = text.encode()
    assert "".join(t["text"] for t in tokens) == text
    assert all(raw[t["start"] : t["stop"]].decode() == t["text"] for t in tokens)
    assert tokens[-1]["stop"] == len(raw) > len(text)


def test_truncate_keeps_last_tokens() -> None:
    assert truncate_ids([1, 2, 3, 4], 2) == [3, 4]
    assert truncate_ids([1, 2], 5) == [1, 2]


def test_chat_template_renders_with_special_tokens(tokenizer: Tokenizer) -> None:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    )
    assert text == "<s><|user|>ab</s><|assistant|>"
    assert tokenizer.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=False) == (
        "<s><|user|>x</s>"
    )


def test_chat_template_errors(tokenizer: Tokenizer, tmp_path) -> None:
    with pytest.raises(ChatTemplateError, match="bad role"):
        tokenizer.apply_chat_template([{"role": "bad", "content": "x"}])
    (tmp_path / "tokenizer.json").write_bytes(tokenizer._hf.to_str().encode())
    bare = Tokenizer.from_model_dir(tmp_path)
    assert bare.eos_token_id is None
    with pytest.raises(ChatTemplateError, match="template not found"):
        bare.apply_chat_template([{"role": "user", "content": "x"}])


def test_template_sandbox_and_named_templates(tokenizer: Tokenizer, tmp_path) -> None:
    (tmp_path / "tokenizer.json").write_text(tokenizer._hf.to_str())
    templates = [{"name": "default", "template": "{{ messages.append(1) }}"}, {"name": "x", "template": ""}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": templates}))
    with pytest.raises(ChatTemplateError):  # the immutable sandbox refuses mutation
        Tokenizer.from_model_dir(tmp_path).apply_chat_template([{"role": "user", "content": "x"}])
    (tmp_path / "chat_template.jinja").write_text("{{ messages | length }}")
    assert Tokenizer.from_model_dir(tmp_path).apply_chat_template([{"role": "u", "content": "x"}]) == "1"
