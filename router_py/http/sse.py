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
KEEP_ALIVE_BYTES = KEEP_ALIVE.encode()
OPENAI_DONE = "data: [DONE]\n\n"
RAW_SEND = "prism.raw_send"  # scope key: the server's own ``send`` (EventStreamResponse)


# NOTE: one encoder for every event: json.dumps with these options builds a new one per call
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_dumps = _ENCODER.encode
_dumps_str = json.encoder.encode_basestring  # what _ENCODER.encode does with a str (ensure_ascii=False)


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
        return self._parts[0] + _dumps_str(text) + self._parts[1]


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` of ``events`` (whole SSE events, str) that sends a keep-alive comment after
    ``every`` seconds of silence, always watches for ``http.disconnect`` (whatever the server's ASGI version)
    and always closes ``events``, so an abandoned stream stops generating at once.

    NOTE: per streamed token this is one task step and one ``send`` (docs/performance.md, "The router's CPU
    per streamed token"): ``events`` runs start to end in the one task that writes (so context variables, e.g. a tracing
    span, stay attached to one context, and it is closed there too); silence is watched by one timer that
    re-arms itself and writes the comment from a short task of its own. The chunks between the response's
    start and its end go straight to the server's ``send`` (``RAW_SEND`` in the scope, set by
    :func:`router_py.http.server.create_app`'s app), past the middlewares, which act only on the start and the
    end of a response; both of those still pass through them."""

    def __init__(
        self, events: AsyncIterator[str], headers: dict[str, str], every: float = KEEP_ALIVE_SECONDS
    ) -> None:
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self.every = every

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        events = self.body_iterator

        async def stream(cancel: anyio.CancelScope) -> None:
            writer = _Writer(send, scope.get(RAW_SEND, send), self.every)
            with contextlib.suppress(OSError):
                await writer.run(self.status_code, self.raw_headers, events)  # type: ignore[arg-type]
            cancel.cancel()

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(stream, group.cancel_scope)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            # NOTE: ``stream`` closed it already, unless it never ran
            await events.aclose()  # type: ignore[attr-defined]


class _Writer:
    """One response's writes: the start, every event, keep-alive comments while ``events`` is silent, the
    end."""

    def __init__(self, send: Send, body_send: Send, every: float) -> None:
        self._send, self._body_send, self._every = send, body_send, every
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._beat: asyncio.Future[None] | None = None  # a keep-alive comment being written
        self._timer: asyncio.TimerHandle | None = None

    async def run(self, status: int, headers: list[tuple[bytes, bytes]], events: AsyncIterator[str]) -> None:
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        self._last = self._loop.time()
        self._timer = self._loop.call_later(self._every, self._watch)
        send = self._body_send
        try:
            async for event in events:
                self._last = self._loop.time()
                if self._beat is not None:
                    await self._beat
                await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
        finally:
            self._timer.cancel()
            # NOTE: ``events`` closed in this task (its context), even when the stream is cancelled
            with anyio.CancelScope(shield=True):
                if self._beat is not None:
                    self._beat.cancel()
                    await asyncio.gather(self._beat, return_exceptions=True)
                await events.aclose()  # type: ignore[attr-defined]
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    def _watch(self) -> None:
        silent = self._loop.time() - self._last
        if silent >= self._every and self._beat is None:
            self._beat = asyncio.ensure_future(self._keep_alive())
            silent = 0.0
        self._timer = self._loop.call_later(self._every - silent, self._watch)

    async def _keep_alive(self) -> None:
        try:
            await self._body_send({"type": "http.response.body", "body": KEEP_ALIVE_BYTES, "more_body": True})
        except OSError:
            pass  # the client is gone: the disconnect ends the stream
        finally:
            self._last, self._beat = self._loop.time(), None


def sse_response(events: AsyncIterator[str], headers: dict[str, str]) -> StreamingResponse:
    return EventStreamResponse(events, headers)
