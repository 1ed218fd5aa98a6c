"""HttpGuard at the ASGI level: a client leaving before the response started cancels the handler; one leaving
after it started (a stream) is left to the stream; an exception becomes a JSON 500."""

from __future__ import annotations

import asyncio
import json

from router_py.http.http_guard import HttpGuard

SCOPE = {"type": "http", "method": "POST", "path": "/generate", "headers": []}


def _client(leave_after_s: float | None):
    """An ASGI receive that delivers the body, then a disconnect after ``leave_after_s`` (never if None)."""
    messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

    async def receive():
        if messages:
            return messages.pop(0)
        if leave_after_s is None:
            await asyncio.sleep(3600)
        await asyncio.sleep(leave_after_s)
        return {"type": "http.disconnect"}

    return receive


async def test_client_leaving_before_the_response_cancels_the_handler() -> None:
    cancelled, sent = asyncio.Event(), []

    async def app(scope, receive, send):
        await receive()
        try:
            await asyncio.sleep(3600)  # a long non-streamed generation
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def send(message):
        sent.append(message)

    await asyncio.wait_for(HttpGuard(app)(SCOPE, _client(0.05), send), 5)
    assert cancelled.is_set() and sent == []


async def test_stream_that_started_is_not_cancelled_but_sees_the_disconnect() -> None:
    seen = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        seen.append(await receive())  # the stream's own disconnect watch
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def send(message):
        pass

    await asyncio.wait_for(HttpGuard(app)(SCOPE, _client(0.05), send), 5)
    assert seen == [{"type": "http.disconnect"}]


async def test_exception_before_the_response_is_a_json_500() -> None:
    sent = []

    async def app(scope, receive, send):
        raise ValueError("bug")

    async def send(message):
        sent.append(message)

    await HttpGuard(app)(SCOPE, _client(None), send)
    assert sent[0]["status"] == 500
    assert json.loads(sent[1]["body"]) == {"error": "Internal server error", "error_type": "internal"}
