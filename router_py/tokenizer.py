"""The router's tokenizer: ``tokenizer.json`` (HF tokenizers) plus ``tokenizer_config.json`` (special tokens,
chat template). The shard tokenizes the same text with the same files, so token counts agree (tgi-compat trap
8).
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HfTokenizer

from router_py import env
from router_py.chat_template import ChatTemplate, ChatTemplateError
from router_py.prefix_tokens import PrefixTokenCache, encode_whole


class Tokenizer:
    """Encode/decode and chat templating for one model directory."""

    def __init__(
        self, hf: HfTokenizer, config: dict[str, Any] | None = None, chat_template: str | None = None
    ):
        self._hf = hf
        self._prefixes, self.prefix_reuse_off = (
            PrefixTokenCache.for_tokenizer(hf) if env.prompt_prefix_reuse() else (None, "PRISM_TOKEN_REUSE=0")
        )
        config = config or {}
        self.bos_token = _token_content(config.get("bos_token"))
        self.eos_token = _token_content(config.get("eos_token"))
        source = chat_template if chat_template is not None else _pick_template(config.get("chat_template"))
        self._template = ChatTemplate(source, self.bos_token, self.eos_token) if source else None

    @classmethod
    def from_model_dir(cls, path: str | Path) -> Tokenizer:
        """Load ``tokenizer.json`` and, when present, ``tokenizer_config.json``; a template in
        ``chat_template.jinja`` or ``chat_template.json`` wins over the config's (as in transformers)."""
        root = Path(path)
        hf = HfTokenizer.from_file(str(root / "tokenizer.json"))
        config_path = root / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        return cls(hf, config, _template_file(root))

    @property
    def eos_token_id(self) -> int | None:
        return self._hf.token_to_id(self.eos_token) if self.eos_token else None

    @cached_property
    def vocab_size(self) -> int:
        """One more than the largest token id (added tokens included)."""
        return max(self._hf.get_vocab(with_added_tokens=True).values(), default=-1) + 1

    @property
    def has_chat_template(self) -> bool:
        return self._template is not None

    def template_mentions(self, name: str) -> bool:
        """Whether the chat template's source names ``name`` (e.g. renders ``tools`` / ``tool_calls`` itself)."""
        return self._template is not None and name in self._template.source

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """The ids ``tokenizer.json`` gives ``text``; a text opening as an earlier one did reuses that opening's
        ids (``prefix_tokens``; ``prefix_reuse_off`` says why not, when not)."""
        if self._prefixes is not None:
            return self._prefixes.encode(text, add_special_tokens)
        return encode_whole(self._hf, text, add_special_tokens)

    def encode_with_offsets(self, text: str, add_special_tokens: bool = True) -> list[dict[str, Any]]:
        """TGI's /tokenize shape ``[{id, text, start, stop}]`` with UTF-8 byte offsets into ``text``."""
        encoding = self._hf.encode(text, add_special_tokens=add_special_tokens)
        raw = text.encode("utf-8")
        byte_at = _char_to_byte_index(text)
        out = []
        for token_id, (start, stop) in zip(encoding.ids, encoding.offsets):
            b_start, b_stop = byte_at[start], byte_at[stop]
            piece = raw[b_start:b_stop].decode("utf-8", errors="replace")
            out.append({"id": token_id, "text": piece, "start": b_start, "stop": b_stop})
        return out

    def decode(self, ids: list[int] | tuple[int, ...], skip_special_tokens: bool = True) -> str:
        return str(self._hf.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
        continue_final: bool = False,
    ) -> str:
        """Render the chat template (``extra``, ``continue_final``: :meth:`ChatTemplate.render`). Raises
        ChatTemplateError (422 ``template_error``) when there is none or it fails."""
        if self._template is None:
            raise ChatTemplateError("template not found")
        return self._template.render(messages, add_generation_prompt, tools, extra, continue_final)


def truncate_ids(ids: list[int], truncate: int) -> list[int]:
    """Keep the LAST ``truncate`` tokens (TGI truncates from the left)."""
    return ids[-truncate:] if len(ids) > truncate else ids


def _char_to_byte_index(text: str) -> list[int]:
    positions, total = [], 0
    for ch in text:
        positions.append(total)
        total += len(ch.encode("utf-8"))
    positions.append(total)
    return positions


def _token_content(token: Any) -> str | None:
    if isinstance(token, dict):
        return token.get("content")
    return token if isinstance(token, str) else None


def _pick_template(value: Any) -> str | None:
    """``chat_template`` is a string or a list of ``{name, template}``; the ``default`` one is used."""
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        return named.get("default")
    return value if isinstance(value, str) else None


def _template_file(root: Path) -> str | None:
    jinja = root / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text()
    as_json = root / "chat_template.json"
    if as_json.exists():
        return _pick_template(json.loads(as_json.read_text()).get("chat_template"))
    return None


__all__ = ["ChatTemplateError", "Tokenizer", "truncate_ids"]
