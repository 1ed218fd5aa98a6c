"""HttpGuard at the ASGI level: a client leaving before the response started cancels the handler; one leaving
after it started (a stream) is left to the stream; an exception becomes a JSON 500."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from router_py.http.http_guard import HttpGuard
from router_py.http.server import create_app
from router_py.metrics import Metrics
from router_py.router_config import RouterConfig
from router_py.tests.conftest import FakeBackend

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


@pytest.mark.parametrize("path", ["/generate", "/generate_stream", "/v1/chat/completions", "/v1/completions"])
async def test_client_leaving_while_sending_its_body_is_not_an_error(caplog, tokenizer, path) -> None:
    """The server's own app: half a body, then the connection closes. Nothing to answer, nothing to log as an
    error (a client can do this at will)."""
    app = create_app(FakeBackend(), tokenizer, RouterConfig(model_id="t", max_input_tokens=100,
                                                            max_total_tokens=200), Metrics(100, 200))
    half = {"type": "http.request", "body": b'{"inputs": "he', "more_body": True}
    messages = [half, {"type": "http.disconnect"}]

    async def receive():
        return messages.pop(0) if messages else await asyncio.sleep(3600)

    sent = []

    async def send(message):
        sent.append(message)

    headers = [(b"content-type", b"application/json"), (b"content-length", b"100")]
    scope = {**SCOPE, "path": path, "headers": headers, "query_string": b"", "http_version": "1.1",
             "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000), "root_path": ""}
    with caplog.at_level(logging.DEBUG):
        await asyncio.wait_for(app(scope, receive, send), 5)
    assert sent == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
