"""SSE framing helpers: TGI's ``data:{json}`` events, keep-alive comments while the producer is silent, and
closing the stream closes the producer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from router_py.http.sse import KEEP_ALIVE, OPENAI_DONE, TgiEventTemplate, tgi_event, with_keep_alive


def test_event_framing() -> None:
    assert tgi_event({"a": "é", "b": None}) == 'data:{"a":"é","b":null}\n\n'
    assert OPENAI_DONE == "data: [DONE]\n\n"


async def test_keep_alive_while_producer_is_silent() -> None:
    release = asyncio.Event()

    async def producer() -> AsyncIterator[str]:
        yield "first"
        await release.wait()
        yield "second"

    stream = with_keep_alive(producer(), every=0.01)
    assert await stream.__anext__() == "first"
    assert await stream.__anext__() == KEEP_ALIVE  # the producer is blocked until released
    release.set()
    rest = [item async for item in stream]
    assert rest[-1] == "second" and set(rest[:-1]) <= {KEEP_ALIVE}


async def test_closing_the_stream_closes_the_producer() -> None:
    closed = asyncio.Event()

    async def producer() -> AsyncIterator[str]:
        try:
            yield "first"
            await asyncio.Event().wait()  # never set: only cancellation ends this
        finally:
            closed.set()

    stream = with_keep_alive(producer())
    assert await stream.__anext__() == "first"
    await stream.aclose()
    assert closed.is_set()


async def test_producer_errors_propagate() -> None:
    async def producer() -> AsyncIterator[str]:
        yield "first"
        raise RuntimeError("boom")

    stream = with_keep_alive(producer())
    assert await stream.__anext__() == "first"
    with pytest.raises(RuntimeError, match="boom"):
        await stream.__anext__()


@pytest.mark.parametrize("text", ["", " guxilath", 'quote " back \\ slash', "é ü 中文 😀", "\x00\x15\x0c\n\t",
                                  "\u2028\ud800", "\x00prism-probe\x00"])
def test_event_template_renders_as_the_plain_event(text: str) -> None:
    def chunk(t: str) -> dict:
        return {"object": "text_completion", "model": "m/é", "choices": [{"index": 1, "text": t, "x": None}]}

    assert TgiEventTemplate(chunk).render(text) == tgi_event(chunk(text))
    # a probe that shows twice in the template: the plain rendering, still identical
    twice = TgiEventTemplate(lambda t: {"a": TgiEventTemplate._PROBE, "text": t})
    assert twice.render(text) == tgi_event({"a": TgiEventTemplate._PROBE, "text": text})
