"""EventStreamResponse: keep-alive comments while the producer is silent, the producer run and closed in the
one task that writes, the mid-stream chunks straight to the server's send, nothing left pending (issue 16
item 4: "Task was destroyed but it is pending!" on disconnect)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
from collections.abc import AsyncIterator

import pytest

from router_py.http.sse import KEEP_ALIVE, RAW_SEND, EventStreamResponse

_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("span", default="")


class Client:
    """The server side of one exchange: ``send`` records bodies; ``receive`` disconnects when told."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.gone = asyncio.Event()
        self.bodies: list[tuple[str, bytes]] = []  # (which send, body)
        self.fail_after = fail_after

    async def receive(self) -> dict:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    def send_as(self, name: str):
        async def send(message: dict) -> None:
            if message["type"] == "http.response.body":
                if self.fail_after is not None and len(self.bodies) >= self.fail_after:
                    raise OSError("connection reset")
                self.bodies.append((name, message["body"]))
        return send

    def scope(self) -> dict:
        return {"type": "http", "asgi": {"spec_version": "2.4"}, RAW_SEND: self.send_as("raw")}

    def text(self) -> list[str]:
        return [body.decode() for _, body in self.bodies if body]


async def serve(events: AsyncIterator[str], client: Client, every: float = 15.0) -> None:
    await EventStreamResponse(events, {}, every)(client.scope(), client.receive, client.send_as("app"))


async def test_keep_alive_while_producer_is_silent() -> None:
    release = asyncio.Event()

    async def producer() -> AsyncIterator[str]:
        yield "first"
        await release.wait()
        yield "second"

    client = Client()
    task = asyncio.ensure_future(serve(producer(), client, every=0.01))
    await asyncio.sleep(0.05)
    release.set()
    await task
    text = client.text()
    assert text[0] == "first" and text[-1] == "second" and KEEP_ALIVE in text[1:-1]
    assert set(text[1:-1]) == {KEEP_ALIVE}


async def test_chunks_skip_the_middlewares_start_and_end_do_not() -> None:
    async def producer() -> AsyncIterator[str]:
        yield "a"
        yield "b"

    client = Client()
    await serve(producer(), client)
    assert client.bodies == [("raw", b"a"), ("raw", b"b"), ("app", b"")]


async def test_producer_runs_and_closes_in_one_context_when_the_client_goes() -> None:
    seen: list[str] = []

    async def producer() -> AsyncIterator[str]:
        token = _VAR.set("span")
        try:
            yield "first"
            await asyncio.Event().wait()  # never set: only the disconnect ends this
        finally:
            seen.append(_VAR.get())
            _VAR.reset(token)  # raises ValueError in another context

    before = set(asyncio.all_tasks())
    client = Client()
    task = asyncio.ensure_future(serve(producer(), client))
    await asyncio.sleep(0.01)
    client.gone.set()
    await task
    assert seen == ["span"] and client.text() == ["first"]
    await asyncio.sleep(0)
    gc.collect()
    left = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()]
    assert left == []


async def test_a_failed_write_closes_the_producer_in_its_context() -> None:
    seen: list[str] = []

    async def producer() -> AsyncIterator[str]:
        token = _VAR.set("span")
        try:
            for i in range(10):
                yield str(i)
        finally:
            seen.append(_VAR.get())
            _VAR.reset(token)

    client = Client(fail_after=2)
    task = asyncio.ensure_future(serve(producer(), client))
    await asyncio.sleep(0.01)
    client.gone.set()
    await task
    assert seen == ["span"] and client.text() == ["0", "1"]


async def test_producer_errors_propagate() -> None:
    async def producer() -> AsyncIterator[str]:
        yield "first"
        raise RuntimeError("boom")

    client = Client()
    with pytest.raises(BaseException) as info:
        await serve(producer(), client)
    assert "boom" in repr(info.value) or any("boom" in repr(e) for e in getattr(info.value, "exceptions", ()))
    assert client.text() == ["first"]


async def test_a_blocked_keep_alive_is_cancelled_when_the_client_goes() -> None:
    class Stuck(Client):
        def send_as(self, name: str):
            inner = super().send_as(name)

            async def send(message: dict) -> None:
                if message.get("body") == KEEP_ALIVE.encode():
                    await asyncio.Event().wait()  # a write waiting for the socket to drain, forever
                await inner(message)
            return send

    async def producer() -> AsyncIterator[str]:
        yield "first"
        await asyncio.sleep(0.05)
        yield "second"  # waits for the keep-alive write in flight

    before = set(asyncio.all_tasks())
    client = Stuck()
    task = asyncio.ensure_future(serve(producer(), client, every=0.01))
    await asyncio.sleep(0.1)
    client.gone.set()
    await asyncio.wait_for(task, 1)
    assert client.text() == ["first"]
    await asyncio.sleep(0)
    left = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()]
    assert left == []
