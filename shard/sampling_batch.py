"""Next-token choice for a whole batch at once: TGI's processors and warpers (order as in
:mod:`shard.sampling`) as batched tensor ops over a (b, vocab) fp32 logits matrix.

Per-row Python remains only where a row has its own state: drawing one uniform number from the request's
seeded generator (so a seeded request gets the same tokens whatever its batch), and the rare watermark and
typical_p rows. Tokens are drawn by inverting the row's CDF at that number. vLLM's processors are batched
too: every row's logit_bias entries (and min_tokens masks) are one scatter over (row, token) index lists,
min_p one masked_fill over its rows; a batch where no row uses them pays nothing (the row lists are empty).

Numerics are safe for every value validation accepts (temperature and repetition_penalty are only "> 0"): the
row maximum is subtracted before dividing by the temperature (the best token stays at 0, the rest go to
-inf at worst, never NaN), and +inf produced by a tiny repetition penalty is clamped to the largest finite
float. A row that still ends without a finite choice (NaN logits from the model) fails alone: its entry in
the result is the exception, and the other rows are unaffected.

Plain greedy rows (every chooser ``plain``: no penalty, warper, watermark or draw; the common case) take one
pass over the logits: the argmax and its log-probability, without a (b, vocab) log_softmax (on a CPU one call,
:func:`flash_kernels.backends.cpu_pointwise.greedy_rows`); a row's full log-distribution is computed only if
its Choice's ``logprobs`` is read (top-n tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from flash_kernels.backends import cpu_pointwise
from shard.sampling import Choice, NextTokenChooser, typical_p, watermark

FLOAT_MAX = torch.finfo(torch.float32).max
# NOTE: the smallest normal fp32; a denormal divisor could be flushed to 0 (0 / 0 = NaN) under FTZ/DAZ.
FLOAT_TINY = torch.finfo(torch.float32).tiny


class SamplingError(ValueError):
    """The request's distribution has no valid token (e.g. NaN logits); fails that request only."""


@dataclass(frozen=True)
class Rows:
    """Host lists of per-row parameters and the row indices each stage touches."""

    penalized: list[int]
    warped_temperature: list[int]
    top_k: list[int]
    top_p: list[int]
    typical: list[int]
    watermark: list[int]
    sampled: list[int]
    biased: list[int]
    min_tokens: list[int]  # rows whose stop ids are still masked
    min_p: list[int]  # sampled rows only: min_p does not change an argmax

    @classmethod
    def of(cls, choosers: Sequence[NextTokenChooser], histories: Sequence[Sequence[int]]) -> Rows:
        ps = [c.params for c in choosers]
        idx = range(len(ps))
        sampled = [i for i in idx if choosers[i].generator is not None]
        return cls(
            penalized=[i for i in idx if ps[i].repetition_penalty != 1.0 or ps[i].frequency_penalty != 0.0],
            warped_temperature=[i for i in idx if ps[i].temperature != 1.0],
            top_k=[i for i in idx if 0 < ps[i].top_k],
            top_p=[i for i in idx if ps[i].top_p < 1.0],
            typical=[i for i in idx if ps[i].typical_p < 1.0],
            watermark=[i for i in idx if ps[i].watermark],
            sampled=sampled,
            biased=[i for i in idx if ps[i].logit_bias],
            min_tokens=[i for i in idx if choosers[i].masks_stop_ids(len(histories[i]))],
            min_p=[i for i in sampled if ps[i].min_p > 0.0],
        )


def device_safe(choosers: Sequence[NextTokenChooser]) -> bool:
    """True when every row is plain greedy (no penalty, warper, watermark, draw, logit_bias or min_tokens
    mask): :func:`choose_batch` then runs only tensor ops on the logits' own device, so a GPU's logits need
    not be copied to the host."""
    return all(c.plain for c in choosers)


def choose_batch(
    choosers: Sequence[NextTokenChooser], logits: torch.Tensor, histories: Sequence[Sequence[int]]
) -> list[Choice | SamplingError]:
    """One choice per row.

    Args:
        choosers: one per row (parameters and seeded generator).
        logits: (b, vocab) fp32 raw model output, not modified; on the CPU, or on any device when
            :func:`device_safe` holds for ``choosers``.
        histories: per row every token id so far (prompt + generated), for penalties and the watermark.
    Returns:
        per row a Choice, or a SamplingError when the row has no valid token.
    """
    if all(c.plain for c in choosers):
        return _choose_greedy(logits)
    rows = Rows.of(choosers, histories)
    scores = _process(choosers, logits, histories, rows)
    scores = _warp(choosers, scores, rows)
    logprobs = torch.log_softmax(scores, dim=-1)
    tokens = scores.argmax(dim=-1)
    if rows.sampled:
        tokens[rows.sampled] = _draw(choosers, logprobs, rows.sampled)
    picked = logprobs.gather(1, tokens[:, None])[:, 0]
    ok = torch.isfinite(picked).tolist()
    out: list[Choice | SamplingError] = []
    for i, (token, logprob) in enumerate(zip(tokens.tolist(), picked.tolist())):
        if ok[i]:
            out.append(Choice(token, logprob, logprobs[i]))
        else:
            out.append(_no_token(logprob))
    return out


def _choose_greedy(logits: torch.Tensor) -> list[Choice | SamplingError]:
    """Plain greedy rows: argmax and its logprob (max - logsumexp) per row, one pass over (b, vocab) logits.
    A row fails where the general path's would: its logprob is not finite (NaN, +inf, or only -inf)."""
    if cpu_pointwise.greedy_usable(logits):
        tokens, picked = cpu_pointwise.greedy_rows(logits)
    else:
        top = logits.amax(dim=-1, keepdim=True)
        picked = -(logits - top).exp().sum(dim=-1).log()
        tokens = logits.argmax(dim=-1)
    out: list[Choice | SamplingError] = []
    for i, (token, logprob) in enumerate(zip(tokens.tolist(), picked.tolist())):
        if math.isfinite(logprob):
            out.append(Choice(token, logprob, logits, i))
        else:
            out.append(_no_token(logprob))
    return out


def _no_token(logprob: float) -> SamplingError:
    return SamplingError(f"no valid next token (logprob {logprob}); the logits hold NaN or inf")


def _process(
    choosers: Sequence[NextTokenChooser], logits: torch.Tensor, histories: Sequence[Sequence[int]], rows: Rows
) -> torch.Tensor:
    """logit_bias, the min_tokens mask, watermark, repetition and frequency penalties on a copy of ``logits``
    (b, vocab)."""
    if not (rows.penalized or rows.watermark or rows.biased or rows.min_tokens):
        return logits
    scores = logits.clone()
    if rows.biased:
        biases = [choosers[i].params.logit_bias for i in rows.biased]
        index = _scatter_index(rows.biased, [[t for t, _ in b] for b in biases])
        scores.index_put_(index, torch.tensor([v for b in biases for _, v in b]), accumulate=True)
    if rows.min_tokens:
        _mask_stop_ids(scores, choosers, rows.min_tokens)
    for i in rows.watermark:
        if histories[i]:
            scores[i] = watermark(scores[i], histories[i][-1])
    if rows.penalized:
        idx = torch.tensor(rows.penalized)
        vocab = scores.shape[1]
        counts = torch.stack([choosers[i].token_counts(histories[i], vocab) for i in rows.penalized])
        params = [choosers[i].params for i in rows.penalized]
        rep = torch.tensor([p.repetition_penalty for p in params]).clamp(min=FLOAT_TINY)[:, None]
        freq = torch.tensor([p.frequency_penalty for p in params])[:, None]
        lengths = torch.tensor([max(len(histories[i]), 1) for i in rows.penalized], dtype=torch.float32)
        lengths = lengths[:, None]
        sub = scores[idx]
        penalized = torch.where(sub < 0, sub * rep, sub / rep)
        sub = torch.where(counts > 0, penalized, sub)
        sub = sub - freq * counts / lengths
        # NOTE: a penalty near 0 divides positive logits into +inf; clamp so softmax stays defined.
        scores[idx] = sub.clamp(max=FLOAT_MAX)
    return scores


def _scatter_index(
    row_ids: Sequence[int], tokens: Sequence[Sequence[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, token) int64 index tensors of every token of every row: one ``index_put_`` for the batch."""
    row = [r for r, ts in zip(row_ids, tokens) for _ in ts]
    flat = [t for ts in tokens for t in ts]
    return torch.tensor(row, dtype=torch.int64), torch.tensor(flat, dtype=torch.int64)


def _mask_stop_ids(scores: torch.Tensor, choosers: Sequence[NextTokenChooser], masked: list[int]) -> None:
    """min_tokens: the rows' stop ids to -inf, in place. NOTE: a row left with no finite logit keeps its ids
    (a grammar that allows only EOS has ended its value; masking it would fail the request instead of ending
    it, so there min_tokens yields). Ids beyond the logits' vocabulary (stop_token_ids are not checked against
    it, as in vLLM) cannot be generated: nothing to mask."""
    vocab = scores.shape[1]
    ids = [[t for t in choosers[i].min_tokens.ids if t < vocab] for i in masked]  # type: ignore[union-attr]
    idx = torch.tensor(masked, dtype=torch.int64)
    before = scores[idx]
    scores.index_put_(_scatter_index(masked, ids), torch.tensor(float("-inf")))
    dead = ~torch.isfinite(scores[idx]).any(dim=-1)
    if bool(dead.any()):
        scores[idx[dead]] = before[dead]


def _warp(choosers: Sequence[NextTokenChooser], scores: torch.Tensor, rows: Rows) -> torch.Tensor:
    """Temperature, min_p, top_k, top_p, typical_p on the rows that ask for them; returns (b, vocab)."""
    if not (rows.warped_temperature or rows.min_p or rows.top_k or rows.top_p or rows.typical):
        return scores
    scores = scores.clone()
    if rows.warped_temperature:
        idx = torch.tensor(rows.warped_temperature)
        temps = torch.tensor([choosers[i].params.temperature for i in rows.warped_temperature])
        temps = temps.clamp(min=FLOAT_TINY)[:, None]
        sub = scores[idx]
        # NOTE: max first: a temperature near 0 sends every other token to -inf, the best one stays at 0.
        scores[idx] = (sub - sub.max(dim=-1, keepdim=True).values) / temps
    if rows.min_p:
        # NOTE: p_i < min_p * p_max  <=>  s_i - s_max < log(min_p), on the tempered logits: no softmax
        idx = torch.tensor(rows.min_p)
        floor = torch.tensor([math.log(choosers[i].params.min_p) for i in rows.min_p])[:, None]
        sub = scores[idx]
        scores[idx] = sub.masked_fill(sub - sub.max(dim=-1, keepdim=True).values < floor, float("-inf"))
    if rows.top_k:
        idx = torch.tensor(rows.top_k)
        ks = torch.tensor([min(choosers[i].params.top_k, scores.shape[1]) for i in rows.top_k])
        sub = scores[idx]
        top = torch.topk(sub, int(ks.max()), dim=-1).values
        kth = top.gather(1, (ks - 1)[:, None])
        scores[idx] = sub.masked_fill(sub < kth, float("-inf"))
    if rows.top_p:
        idx = torch.tensor(rows.top_p)
        mass = torch.tensor([choosers[i].params.top_p for i in rows.top_p])[:, None]
        scores[idx] = _top_p_rows(scores[idx], mass)
    for i in rows.typical:
        scores[i] = typical_p(scores[i], choosers[i].params.typical_p)
    return scores


def _top_p_rows(scores: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """Row-wise :func:`shard.sampling.top_p`: scores (k, vocab), mass (k, 1)."""
    sorted_scores, order = torch.sort(scores, dim=-1)
    cumulative = sorted_scores.softmax(-1).cumsum(-1)
    remove = cumulative <= 1 - mass
    remove[:, -1] = False
    return scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))


def _draw(choosers: Sequence[NextTokenChooser], logprobs: torch.Tensor, sampled: list[int]) -> torch.Tensor:
    """Tokens (len(sampled),) int64: each row's CDF inverted at a uniform number from its own generator."""
    uniform = torch.cat([torch.rand(1, generator=choosers[i].generator) for i in sampled])
    cdf = logprobs[sampled].exp().cumsum(-1)
    target = (uniform * cdf[:, -1])[:, None]
    tokens = torch.searchsorted(cdf, target, right=True)[:, 0]
    return tokens.clamp(max=logprobs.shape[1] - 1)


def choose_one(chooser: NextTokenChooser, logits: torch.Tensor, history: list[int]) -> Choice:
    """Pick one request's next token (a batch of one).

    Args:
        logits: (vocab,) fp32 on the CPU, raw model output for the last position.
        history: every token id so far (prompt + generated), for penalties and the watermark.
    Raises:
        ValueError: no valid token (NaN logits).
    """
    choice = choose_batch([chooser], logits[None, :], [history])[0]
    if isinstance(choice, Exception):
        raise choice
    return choice
