"""Next-token choice and stopping, per request, following TGI's order of operations.

Logits processors (in order): logit_bias and the min_tokens mask (vLLM's, which applies them before its
penalties), watermark, repetition penalty, frequency penalty; then warpers: temperature, min_p (after the
temperature, as in vLLM), top_k, top_p, typical_p. A request samples when ``do_sample`` or any of TGI's
warpers is active, else takes the argmax; min_p does not make a request sample and a greedy one ignores it
(vLLM: no min_p at temperature 0). Log-probabilities are those of the processed distribution (as TGI reports
them). Sampling runs on the CPU with a per-request ``torch.Generator`` seeded from ``seed``: same seed, same
tokens, whatever the batch.
"""

from __future__ import annotations

import enum
import math
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
    min_p: float = 0.0  # 0: off
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)

    def __post_init__(self) -> None:
        if (
            self.temperature <= 0
            or self.repetition_penalty <= 0
            or not 0 < self.top_p <= 1
            or not 0 < self.typical_p <= 1
            or not 0 <= self.min_p <= 1
            or any(token < 0 or not math.isfinite(bias) for token, bias in self.logit_bias)
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


@dataclass(frozen=True)
class MinTokens:
    """vLLM's ``min_tokens``: ``ids`` (EOS and the request's stop_token_ids) cannot be chosen while the
    request's history (prompt + generated) is shorter than ``until`` (prompt length + min_tokens)."""

    ids: tuple[int, ...]
    until: int


class NextTokenChooser:
    """Per-request sampler state: its random generator, its token counts when penalties need them, and its
    min_tokens mask while it lasts."""

    def __init__(self, params: SamplingParams, min_tokens: MinTokens | None = None) -> None:
        self.params = params
        # NOTE: plain greedy (no penalty, bias, mask, watermark or draw): the batched choice's one-pass path
        self._plain = not params.samples and not params.watermark and params.repetition_penalty == 1.0 \
            and params.frequency_penalty == 0.0 and not params.logit_bias
        self.min_tokens = min_tokens if min_tokens is not None and min_tokens.ids else None
        self.plain = self._plain and self.min_tokens is None
        self.generator = torch.Generator().manual_seed(params.seed) if params.samples else None
        self._counts: torch.Tensor | None = None
        self._counted = 0

    def masks_stop_ids(self, history_len: int) -> bool:
        """Whether the min_tokens mask applies to a history of ``history_len`` ids. Once it no longer does,
        the mask is dropped for good (a history only grows) and the chooser is ``plain`` again if it was."""
        if self.min_tokens is None:
            return False
        if history_len < self.min_tokens.until:
            return True
        self.min_tokens, self.plain = None, self._plain
        return False

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
    """TGI's stopping: max_new_tokens first, then EOS (unless ignored), then vLLM's stop_token_ids, then stop
    sequences on the tail.

    ``stop_token_ids`` end the request as EOS does (EOS_TOKEN) and set ``stop_token_hit``: the token counts as
    generated, but its text is left out of the output (vLLM's default). With ``min_tokens``, a stop sequence
    matches only where it ends in the text of a token after the first ``min_tokens`` (it may begin before, as
    vLLM searches); EOS and stop_token_ids cannot come before then because the chooser masks them
    (:class:`MinTokens`).
    """

    eos_token_ids: frozenset[int]
    max_new_tokens: int
    stop_sequences: tuple[str, ...] = ()
    ignore_eos_token: bool = False
    stop_token_ids: frozenset[int] = frozenset()
    min_tokens: int = 0
    generated: int = 0
    stop_token_hit: bool = False
    tail: str = field(default="", repr=False)
    # NOTE: the ids that end the request (EOS unless ignored, and stop_token_ids): one set lookup per token, as
    # EOS alone took before stop_token_ids existed, so a request without them pays nothing per step for them
    _ends: frozenset[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.stop_sequences = tuple(self.stop_sequences)  # NOTE: str.endswith takes a tuple, not a list
        self._ends = self.stop_token_ids | (frozenset() if self.ignore_eos_token else self.eos_token_ids)

    def __call__(self, token_id: int, text: str) -> FinishReason | None:
        """Count one generated token with its incremental ``text``; the reason to stop, if any."""
        self.generated += 1
        if self.generated >= self.max_new_tokens:
            return FinishReason.LENGTH
        if self._ends and token_id in self._ends:
            # NOTE: an EOS that is not ignored is EOS, even when also a stop token id (its text is special)
            self.stop_token_hit = token_id in self.stop_token_ids and (
                self.ignore_eos_token or token_id not in self.eos_token_ids
            )
            return FinishReason.EOS_TOKEN
        if self.stop_sequences:
            self.tail = (self.tail + text)[-STOP_TAIL_CHARS:]
            # NOTE: a match must end in this token's text (vLLM's search), after the first min_tokens tokens
            if text and self.generated > self.min_tokens and self.tail.endswith(self.stop_sequences):
                return FinishReason.STOP_SEQUENCE
        return None
