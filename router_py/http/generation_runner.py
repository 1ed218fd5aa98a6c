"""Running validated requests on the backend: the concurrency permits, whole (non-streamed) generations and
best_of (tgi-compat 3.2/3.3). Response shaping is :mod:`router_py.http.responses`'."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Awaitable
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import TypeVar

from router_py.http.errors import from_infer_error, incomplete_generation, overloaded
from router_py.backend_api import (
    Backend,
    EndEvent,
    InferError,
    InferEvent,
    PrefillTokens,
    Token,
    ValidRequest,
)
from router_py.http.openai_stop import StopText, token_text
from router_py.http.special_text import SpecialText


T = TypeVar("T")


async def gather_or_cancel(*parts: Awaitable[T]) -> list[T]:
    """``asyncio.gather`` of a call's parts (vertex instances, completions prompts, best_of sequences) that,
    when one part fails, cancels the others and waits for them to leave, as TGI's ``try_join_all`` drops
    them: the call is answered with that error, so nobody would read what they go on generating (while they
    held their permits and KV blocks)."""
    tasks = [asyncio.ensure_future(part) for part in parts]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class Permits:
    """``max_concurrent_requests`` as a non-blocking semaphore: a request that finds none free gets 429."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    def acquire(self, count: int = 1) -> None:
        """Take ``count`` permits (one per sequence, as TGI) or raise HttpError 429 ``overloaded`` taking
        none; pair with :meth:`release`."""
        if self.in_use + count > self.limit:
            raise overloaded()
        self.in_use += count

    def release(self, count: int = 1) -> None:
        self.in_use -= count


@dataclass
class FinishedSequence:
    """One finished sequence, as collected from the backend's event stream."""

    request: ValidRequest
    end: EndEvent
    tokens: list[Token] = field(default_factory=list)
    top_tokens: list[list[Token]] = field(default_factory=list)
    prefill: list[Token] = field(default_factory=list)
    prefill_top: list[list[Token]] = field(default_factory=list)  # per prompt token, with top_n_tokens
    prefill_ranks: list[int] = field(default_factory=list)  # per prompt token (0: none, the first)

    @property
    def mean_logprob(self) -> float:
        logprobs = [t.logprob for t in self.tokens if t.logprob is not None]
        return sum(logprobs) / len(logprobs) if logprobs else float("-inf")


@dataclass(frozen=True)
class Timings:
    """TGI's per-request durations in seconds (the ``x-*-time`` headers and request histograms)."""

    total: float
    validation: float
    queue: float
    inference: float
    per_token: float

    @classmethod
    def of(cls, start: float, validated: float, end: EndEvent, generated: int, now: float) -> Timings:
        queued = end.queued_at or validated
        started = end.started_at or queued
        inference = max(now - started, 0.0)
        return cls(
            total=now - start,
            validation=max(queued - start, 0.0),
            queue=max(started - queued, 0.0),
            inference=inference,
            per_token=inference / generated if generated else 0.0,
        )


async def stream_events(backend: Backend, request: ValidRequest) -> AsyncGenerator[InferEvent, None]:
    """The backend's events with its InferError mapped to HttpError; the backend's generator is always closed,
    so a caller that stops early (client gone) drops the request from the batch. Consume it under ``aclosing``
    so leaving the loop closes it at once, not at garbage collection."""
    events = backend.generate_stream(request)
    try:
        async for event in events:
            yield event
    except InferError as err:
        raise from_infer_error(err) from err
    finally:
        await events.aclose()  # type: ignore[attr-defined]


async def generate(
    backend: Backend, request: ValidRequest, cut_stops: bool = False, include_stop: bool = False
) -> FinishedSequence:
    """Collect a whole generation; raises HttpError (424 generation, 500 incomplete_generation, ...).

    ``cut_stops``: OpenAI's stop strings (:mod:`router_py.http.openai_stop`): the generation ends at the first
    stop string anywhere in its text, cut before it (``include_stop``: after it), instead of TGI's
    stop-string-at-the-end."""
    tokens: list[Token] = []
    tops: list[list[Token]] = []
    prefill = PrefillTokens([])
    stopping = request.stopping
    stops, min_tokens = stopping.stop_sequences, stopping.min_tokens
    stop = StopText(stops, min_tokens, include_stop) if cut_stops and stops else None
    spelled = None if request.skip_special_tokens else SpecialText()
    async with aclosing(stream_events(backend, request)) as events:
        async for event in events:
            if spelled is not None:
                event = spelled(event)
            if isinstance(event, PrefillTokens):
                prefill = event
                continue
            tokens.append(event.token)
            tops.append(list(event.top_tokens))
            if stop is not None:
                stop.push(token_text(event.token))
                if stop.hit:  # NOTE: returning below closes the stream, which drops the request
                    event = stop.ended(event)
            if isinstance(event, EndEvent):
                top_tokens = tops if any(tops) else []
                return FinishedSequence(request, event, tokens, top_tokens, list(prefill.tokens),
                                        list(prefill.top_tokens), list(prefill.ranks))
    raise incomplete_generation()


async def generate_best_of(
    backend: Backend, request: ValidRequest, best_of: int, cut_stops: bool = False, include_stop: bool = False
) -> tuple[FinishedSequence, list[FinishedSequence]]:
    """Run ``best_of`` sampled sequences concurrently (each with its own random seed); the one with the
    highest mean token logprob wins, the others are returned in order as TGI's ``best_of_sequences``."""
    requests = [
        replace(request, sampling=replace(request.sampling, seed=random.getrandbits(64)))
        for _ in range(best_of)
    ]
    results = await gather_or_cancel(*(generate(backend, r, cut_stops, include_stop) for r in requests))
    best = max(range(len(results)), key=lambda i: results[i].mean_logprob)
    return results[best], [g for i, g in enumerate(results) if i != best]
