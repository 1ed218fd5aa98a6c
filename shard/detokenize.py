"""Incremental detokenization (TGI's ``decode_token``), full-text decoding and special-token lookup.

Per-token text is the new suffix of decoding a short window ``ids[prefix_offset:]`` versus
``ids[prefix_offset:read_offset]``; a window ending in an incomplete UTF-8 sequence (decoded U+FFFD) yields ""
and keeps the offsets, so the bytes come out with a later token.
"""

from __future__ import annotations

from functools import cached_property

PREFIX_WINDOW = 5


class Detokenizer:
    """Wraps a ``tokenizers.Tokenizer``."""

    def __init__(self, tokenizer: object) -> None:
        self.tokenizer = tokenizer

    @cached_property
    def special_ids(self) -> frozenset[int]:
        return frozenset(i for i, t in self.tokenizer.get_added_tokens_decoder().items() if t.special)

    def is_special(self, token_id: int) -> bool:
        return token_id in self.special_ids

    @staticmethod
    def initial_offsets(prompt_len: int) -> tuple[int, int]:
        """(prefix_offset, read_offset) when the first generated token follows ``prompt_len`` ids."""
        return max(prompt_len - PREFIX_WINDOW, 0), prompt_len

    def next_text(self, ids: list[int], prefix_offset: int, read_offset: int) -> tuple[str, int, int]:
        """Text of the tokens after ``read_offset``; returns (text, new prefix_offset, new read_offset)."""
        prefix = self.tokenizer.decode(ids[prefix_offset:read_offset], skip_special_tokens=False)
        full = self.tokenizer.decode(ids[prefix_offset:], skip_special_tokens=False)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            return full[len(prefix) :], read_offset, len(ids)
        return "", prefix_offset, read_offset

    def token_text(self, token_id: int) -> str:
        """Text of one token on its own (prefill tokens, top-n alternatives)."""
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def text(self, ids: list[int]) -> str:
        """Generated text: special tokens skipped."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def encode(self, text: str, add_special_tokens: bool, truncate: int) -> list[int]:
        """Token ids of ``text``; keeps the LAST ``truncate`` ids if truncate > 0 (TGI's left truncation)."""
        ids = self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        return ids[-truncate:] if truncate > 0 else ids
