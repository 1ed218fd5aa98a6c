"""Plain-data results of one step, converted to ``generate.v3`` messages only in :mod:`shard.convert`."""

from __future__ import annotations

from dataclasses import dataclass, field

from shard.sampling import FinishReason


@dataclass
class TokensOut:
    """Parallel lists."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    is_special: list[bool] = field(default_factory=list)


@dataclass(frozen=True)
class FinishedText:
    text: str
    generated_tokens: int
    finish_reason: FinishReason
    seed: int | None  # only when the request was sampled


@dataclass
class GenerationOut:
    request_id: int
    tokens: TokensOut
    prefill_tokens: TokensOut | None = None
    finished: FinishedText | None = None
    top_tokens: list[TokensOut] = field(default_factory=list)
    error: str | None = None  # this request failed alone; the servicer drops it from the batch
    prefill_top_tokens: list[TokensOut] = field(default_factory=list)  # per prompt position (with top_n)
    prefill_ranks: list[int] = field(default_factory=list)  # per prompt token, with prefill_tokens


def merge_steps(steps: list[list[GenerationOut]]) -> list[GenerationOut]:
    """Consecutive steps of one batch as one answer (the steps run ahead, shard.lookahead): each request's
    tokens in order in one Generation, as TGI carries speculated tokens, with the finish of its last step.
    A request that failed at a later step keeps its earlier tokens in a Generation of their own, followed by
    the failure. Requests keep the order of the first step."""
    if len(steps) == 1:
        return steps[0]
    by_request: dict[int, list[GenerationOut]] = {}
    for step in steps:
        for g in step:
            by_request.setdefault(g.request_id, []).append(g)
    return [g for gens in by_request.values() for g in _join(gens)]


def _join(gens: list[GenerationOut]) -> list[GenerationOut]:
    ok = [g for g in gens if g.error is None]
    failed = [g for g in gens if g.error is not None]
    if len(ok) <= 1:
        return ok + failed
    tokens = TokensOut(
        [i for g in ok for i in g.tokens.ids],
        [p for g in ok for p in g.tokens.logprobs],
        [t for g in ok for t in g.tokens.texts],
        [s for g in ok for s in g.tokens.is_special],
    )
    top = [t for g in ok for t in g.top_tokens]
    first, last = ok[0], ok[-1]
    joined = GenerationOut(first.request_id, tokens, first.prefill_tokens, last.finished, top,
                           prefill_top_tokens=first.prefill_top_tokens, prefill_ranks=first.prefill_ranks)
    return [joined] + failed
