"""Workload segments as text for a live server, built for the served model's tokenizer.

Each segment's text is ``" w1 w2 ... wn-1\\n"``: words chosen among the tokenizer's single-token words, each
with a leading space, and a closing newline. Pre-tokenizers split on that whitespace, so a prompt's tokens are
the concatenation of its segments' tokens and shared leading segments give shared token prefixes
(``tests/test_workloads.py`` checks this through a real tokenizer).
"""

from __future__ import annotations

import random
from pathlib import Path

from tokenizers import Tokenizer

from bench.workloads.request import WorkloadRequest

MAX_WORDS = 2000


def load_tokenizer(model_dir: str | Path) -> Tokenizer:
    """The tokenizer of an HF model folder (its ``tokenizer.json``)."""
    return Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))


def single_token_words(tokenizer: Tokenizer, limit: int = MAX_WORDS) -> list[str]:
    """Alphabetic words that encode, with a leading space, to exactly one token (sorted, so deterministic)."""
    words = set()
    for token in tokenizer.get_vocab():
        word = tokenizer.decode([tokenizer.token_to_id(token)]).strip()
        if word.isascii() and word.isalpha() and word not in words:
            if len(tokenizer.encode(" " + word, add_special_tokens=False).ids) == 1:
                words.add(word)
    if len(words) < 8:
        raise ValueError("tokenizer has too few single-token words to build prompts")
    return sorted(words)[:limit]


class PromptBuilder:
    """Turns workload requests into prompt text; a segment's text depends only on its id and length."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.words = single_token_words(tokenizer)

    def segment_text(self, segment_id: str, n_tokens: int) -> str:
        rng = random.Random(f"segment:{segment_id}")
        words = [rng.choice(self.words) for _ in range(max(1, n_tokens - 1))]
        return "".join(" " + w for w in words) + "\n"

    def prompt(self, request: WorkloadRequest) -> str:
        return "".join(self.segment_text(s, n) for s, n in request.segments)

    def token_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids
