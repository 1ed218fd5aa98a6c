"""Plain-data results of one step, converted to ``generate.v3`` messages only in :mod:`shard.convert`."""

from __future__ import annotations

from dataclasses import dataclass, field

from shard.sampling import FinishReason


@dataclass
class TokensOut:
    """Parallel lists; ``is_special`` stays empty for prefill tokens (TGI)."""

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
