"""Server-sent events: TGI's ``data:{json}`` (no space), the OpenAI routes' ``data: {json}`` and ``data:
[DONE]``, and a keep-alive comment every 15 s while the producer is silent (axum's default)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

KEEP_ALIVE_SECONDS = 15.0
KEEP_ALIVE = ":\n\n"
OPENAI_DONE = "data: [DONE]\n\n"
_END = object()  # with_keep_alive: the producer is done


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def tgi_event(obj: Any) -> str:
    return f"data:{_dumps(obj)}\n\n"


def openai_event(obj: Any) -> str:
    return f"data: {_dumps(obj)}\n\n"


class TgiEventTemplate:
    """``tgi_event(build(text))`` for a stream whose events differ only in one string (a per-token chunk's
    text): the rest is rendered once, so each event encodes only ``text``. Byte-identical to the plain
    rendering (a JSON string encodes the same alone as inside an object); falls back to it if the probe
    text cannot be located exactly once in the rendered template."""

    _PROBE = "\x00prism-probe\x00"

    def __init__(self, build: Callable[[str], Any]) -> None:
        self._build = build
        parts = tgi_event(build(self._PROBE)).split(_dumps(self._PROBE))
        self._parts = parts if len(parts) == 2 else None

    def render(self, text: str) -> str:
        if self._parts is None:
            return tgi_event(self._build(text))
        return self._parts[0] + _dumps(text) + self._parts[1]


async def with_keep_alive(
    events: AsyncIterator[str], every: float = KEEP_ALIVE_SECONDS
) -> AsyncIterator[str]:
    """Forward ``events``, inserting a comment line when none came for ``every`` seconds.

    NOTE: ``events`` runs start to end in ONE producer task (so context variables, e.g. a tracing span, stay
    attached to one context); closing this generator (client disconnect) cancels that task, which closes
    ``events`` and with it the backend's request. Per item this costs one queue hand-off: the silence is
    watched by one timer that re-arms itself, not by a task and a timeout per item (per token, under many
    streaming clients; docs/performance.md)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    last = loop.time()

    async def pump() -> None:
        try:
            async for item in events:
                queue.put_nowait(item)
        finally:
            queue.put_nowait(_END)

    def watch() -> None:
        nonlocal timer
        silent = loop.time() - last
        if silent >= every and queue.empty():
            queue.put_nowait(KEEP_ALIVE)
            silent = 0.0
        timer = loop.call_later(every - silent, watch)

    producer = asyncio.ensure_future(pump())
    timer = loop.call_later(every, watch)
    try:
        while True:
            item = await queue.get()
            if item is _END:
                await producer  # NOTE: raises the producer's error, after every item it yielded
                return
            last = loop.time()
            yield item  # type: ignore[misc]
    finally:
        # NOTE: closed while waiting (client gone): the producer must be cancelled too, or asyncio reports
        # "Task was destroyed but it is pending!" when it is collected
        timer.cancel()
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)


class EventStreamResponse(StreamingResponse):
    """A streaming response that always watches for ``http.disconnect`` (whatever the server's ASGI version)
    and always closes its iterator, so an abandoned stream stops generating at once."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def stream(cancel: anyio.CancelScope) -> None:
            with contextlib.suppress(OSError):
                await self.stream_response(send)
            cancel.cancel()

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(stream, group.cancel_scope)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


def sse_response(events: AsyncIterator[str], headers: dict[str, str]) -> StreamingResponse:
    return EventStreamResponse(with_keep_alive(events), media_type="text/event-stream", headers=headers)
