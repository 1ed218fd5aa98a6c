"""Several async streams read at once, their items in the order they come: the choices of one OpenAI call
(``n``, several completions prompts) are generated side by side, as vLLM streams them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import TypeVar

T = TypeVar("T")
_END = object()


async def merge_streams(streams: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """``(index in streams, item)`` for each item of each stream, as soon as it comes; ends when all have
    ended. The first exception a stream raises is raised here once the others are cancelled and closed;
    closing this generator early (the client left) cancels and closes every stream, so their ``finally``
    blocks run (requests leave the batch, permits are released) before it returns. One stream is read
    directly, with no task in between."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as only:  # type: ignore[type-var]
            async for item in only:
                yield 0, item
        return
    queue: asyncio.Queue[tuple[int, object, BaseException | None]] = asyncio.Queue()
    tasks = [asyncio.ensure_future(_pump(i, s, queue)) for i, s in enumerate(streams)]
    running = len(tasks)
    try:
        while running:
            index, item, error = await queue.get()
            if error is not None:
                raise error
            if item is _END:
                running -= 1
                continue
            yield index, item  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _pump(index: int, stream: AsyncIterator[T], queue: asyncio.Queue) -> None:
    """Put ``stream``'s items on ``queue`` as ``(index, item, None)``, then ``(index, _END, None)``, or
    ``(index, None, error)`` when it fails; the stream is closed however this ends (cancelled too)."""
    try:
        async with aclosing(stream) as items:  # type: ignore[type-var]
            async for item in items:
                queue.put_nowait((index, item, None))
        queue.put_nowait((index, _END, None))
    except Exception as error:  # NOTE: CancelledError is not an Exception: a cancelled pump just stops
        queue.put_nowait((index, None, error))
