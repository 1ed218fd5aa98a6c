"""Next-token choice and stopping, per request, following TGI's order of operations.

Logits processors (in order): watermark, repetition penalty, frequency penalty; then warpers: temperature,
top_k, top_p, typical_p. A request samples when ``do_sample`` or any warper is active, else takes the argmax.
Log-probabilities are those of the processed distribution (as TGI reports them). Sampling runs on the CPU
with a per-request ``torch.Generator`` seeded from ``seed``: same seed, same tokens, whatever the batch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

WATERMARK_GAMMA, WATERMARK_DELTA, WATERMARK_HASH_KEY = 0.5, 2.0, 15485863
STOP_TAIL_CHARS = 300


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    typical_p: float = 1.0
    do_sample: bool = False
    seed: int = 0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    watermark: bool = False

    def __post_init__(self) -> None:
        if (
            self.temperature <= 0
            or self.repetition_penalty <= 0
            or not 0 < self.top_p <= 1
            or not 0 < self.typical_p <= 1
        ):
            raise ValueError(f"invalid sampling parameters {self}")

    @property
    def samples(self) -> bool:
        """True when a token is drawn at random (TGI: do_sample or any warper active)."""
        warped = self.temperature != 1.0 or self.top_k > 0 or self.top_p < 1.0 or self.typical_p < 1.0
        return self.do_sample or warped


class Choice(NamedTuple):
    """One chosen token; ``logprobs`` is the (vocab,) fp32 processed log-distribution (for top-n).

    With ``row`` None, ``scores`` is that log-distribution; else (the plain greedy path, which does not
    compute it for every row) it is row ``row`` of ``scores`` (b, vocab) put through log_softmax, when read.
    NOTE: a tuple: one is made per request and step, and a frozen dataclass costs several times more to make.
    """

    token_id: int
    logprob: float
    scores: torch.Tensor
    row: int | None = None

    @property
    def logprobs(self) -> torch.Tensor:
        return self.scores if self.row is None else torch.log_softmax(self.scores[self.row], -1)


class NextTokenChooser:
    """Per-request sampler state: its random generator, and its token counts when penalties need them."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        # NOTE: plain greedy (no penalty, watermark or draw): the batched choice's one-pass path
        self.plain = not params.samples and not params.watermark and params.repetition_penalty == 1.0 \
            and params.frequency_penalty == 0.0
        self.generator = torch.Generator().manual_seed(params.seed) if params.samples else None
        self._counts: torch.Tensor | None = None
        self._counted = 0

    def token_counts(self, history: list[int], vocab: int) -> torch.Tensor:
        """(vocab,) fp32 occurrences of each id in ``history``; kept between calls and advanced by the ids
        appended since the last one (a request's history only grows)."""
        if self._counts is None or self._counts.numel() != vocab or len(history) < self._counted:
            self._counts, self._counted = torch.zeros(vocab), 0
        new = history[self._counted :]
        if new:
            ids = torch.tensor(new, dtype=torch.int64)
            self._counts.index_add_(0, ids, torch.ones(len(new)))
            self._counted = len(history)
        return self._counts


def watermark(scores: torch.Tensor, previous: int) -> torch.Tensor:
    """Kirchenbauer et al.: add DELTA to a GAMMA share of the vocabulary chosen from the previous token."""
    gen = torch.Generator().manual_seed(WATERMARK_HASH_KEY * previous)
    vocab = scores.numel()
    green = torch.randperm(vocab, generator=gen)[: int(WATERMARK_GAMMA * vocab)]
    scores[green] += WATERMARK_DELTA
    return scores


def top_p(scores: torch.Tensor, mass: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``mass`` (at least one)."""
    sorted_scores, order = torch.sort(scores)
    cumulative = sorted_scores.softmax(-1).cumsum(-1)
    remove = cumulative <= 1 - mass
    remove[-1] = False
    return scores.masked_fill(remove.scatter(0, order, remove), float("-inf"))


def typical_p(scores: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical sampling: keep tokens whose surprisal is closest to the entropy, up to ``mass``."""
    logp = torch.log_softmax(scores, -1)
    entropy = -(logp.exp() * logp).nansum()
    shifted = (-logp - entropy).abs()
    sorted_shift, order = torch.sort(shifted)
    cumulative = scores[order].softmax(-1).cumsum(-1)
    last = int((cumulative < mass).sum().clamp(max=scores.numel() - 1))
    remove = sorted_shift > sorted_shift[last]
    return scores.masked_fill(remove.scatter(0, order, remove), float("-inf"))


class FinishReason(enum.IntEnum):
    """Same numbers as ``generate.v3.FinishReason``."""

    LENGTH = 0
    EOS_TOKEN = 1
    STOP_SEQUENCE = 2


@dataclass
class StoppingCriteria:
    """TGI's stopping: max_new_tokens first, then EOS (unless ignored), then stop sequences on the tail."""

    eos_token_ids: frozenset[int]
    max_new_tokens: int
    stop_sequences: tuple[str, ...] = ()
    ignore_eos_token: bool = False
    generated: int = 0
    tail: str = field(default="", repr=False)

    def __call__(self, token_id: int, text: str) -> FinishReason | None:
        """Count one generated token with its incremental ``text``; the reason to stop, if any."""
        self.generated += 1
        if self.generated >= self.max_new_tokens:
            return FinishReason.LENGTH
        if not self.ignore_eos_token and token_id in self.eos_token_ids:
            return FinishReason.EOS_TOKEN
        if self.stop_sequences:
            self.tail = (self.tail + text)[-STOP_TAIL_CHARS:]
            if any(self.tail.endswith(s) for s in self.stop_sequences):
                return FinishReason.STOP_SEQUENCE
        return None
