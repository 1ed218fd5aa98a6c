"""An ASGI middleware that keeps one HTTP exchange from hurting anything else:

* A client that goes away before its response started (a non-streamed generation) cancels its handler, so
  the request leaves the batch at the next step instead of generating to the end of its round. (Streams
  watch for the disconnect themselves: :class:`router_py.http.sse.EventStreamResponse`.)
* A client that goes away while it sends its body (starlette's ``ClientDisconnect``) ends the exchange
  quietly: nobody is left to answer.
* An unexpected exception becomes a JSON 500 (``error_type`` ``internal``) and is logged; it never reaches
  the server, which would close the keep-alive connection without ``Connection: close``.

After the request body has been read, this middleware alone reads the server's ``receive``: the app's later
calls wait for the disconnect it saw.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)
INTERNAL = {"error": "Internal server error", "error_type": "internal"}


class _Exchange:
    """The state of one request/response, as seen through the wrapped receive/send."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive, self._send = receive, send
        self.body_done = asyncio.Event()
        self.gone = asyncio.Event()
        self.started = False
        self.finished = False

    async def receive(self) -> Message:
        if self.body_done.is_set():
            await self.gone.wait()
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.gone.set()
            self.body_done.set()
        elif not message.get("more_body", False):
            self.body_done.set()
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self._send(message)

    async def watch(self, handler: asyncio.Task[Any]) -> None:
        """After the body: the next server message is the disconnect (or the end of the exchange)."""
        await self.body_done.wait()
        if self.gone.is_set():
            return
        await self._receive()
        self.gone.set()
        if not self.started and not handler.done():
            handler.cancel()


class HttpGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ex = _Exchange(receive, send)
        handler = asyncio.ensure_future(self.app(scope, ex.receive, ex.send))
        watcher = asyncio.ensure_future(ex.watch(handler))
        try:
            await handler
        except asyncio.CancelledError:
            if not (ex.gone.is_set() and handler.cancelled()):
                raise  # cancelled from outside (server shutdown), not by a client leaving
        except ClientDisconnect:
            log.debug("client left while sending %s %s", scope.get("method"), scope.get("path"))
        except Exception:  # noqa: BLE001 - the last line of defence; the route is the bug
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not ex.started:
                await _internal_error(send)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)


async def _internal_error(send: Send) -> None:
    body = json.dumps(INTERNAL).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 500, "headers": headers})
    await send({"type": "http.response.body", "body": body})
