"""Closing a keep-alive stream while it waits cancels everything it started (issue 16 item 4: "Task was
destroyed but it is pending!" on disconnect)."""

from __future__ import annotations

import asyncio
import gc

from router_py.http.sse import with_keep_alive


async def test_closing_while_waiting_leaves_no_pending_task() -> None:
    async def slow():
        yield "a"
        await asyncio.sleep(3600)
        yield "b"

    before = set(asyncio.all_tasks())
    stream = with_keep_alive(slow(), every=30)
    assert await stream.__anext__() == "a"
    waiting = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.01)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await stream.aclose()
    await asyncio.sleep(0)
    gc.collect()
    left = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()]
    assert left == []
