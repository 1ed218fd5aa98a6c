"""router_py.http.stream_merge: items of several streams as they come; a failure, or the reader leaving,
closes every stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from router_py.http.stream_merge import merge_streams


class Stream:
    """Yields ``items``, waiting ``delays[i]`` s before item i; raises ``fail`` after them when given; records
    whether it was closed before its end."""

    def __init__(self, items: list[str], delays: list[float], fail: Exception | None = None) -> None:
        self.items, self.delays, self.fail = items, delays, fail
        self.ended = self.closed = False

    async def run(self) -> AsyncIterator[str]:
        try:
            for item, delay in zip(self.items, self.delays):
                await asyncio.sleep(delay)
                yield item
            if self.fail is not None:
                raise self.fail
            self.ended = True
        finally:
            self.closed = not self.ended


async def _all(streams: list[Stream]) -> list[tuple[int, str]]:
    return [pair async for pair in merge_streams([s.run() for s in streams])]


async def test_items_come_in_the_order_they_are_ready_with_their_stream_index() -> None:
    slow, fast = Stream(["a1", "a2"], [0.0, 0.05]), Stream(["b1", "b2", "b3"], [0.01, 0.01, 0.01])
    got = await _all([slow, fast])
    assert got == [(0, "a1"), (1, "b1"), (1, "b2"), (1, "b3"), (0, "a2")]
    assert slow.ended and fast.ended


async def test_one_stream_is_read_as_it_is() -> None:
    only = Stream(["x", "y"], [0.0, 0.0])
    assert await _all([only]) == [(0, "x"), (0, "y")]


async def test_a_failure_is_raised_after_the_other_streams_are_closed() -> None:
    failing = Stream(["a"], [0.0], fail=ValueError("boom"))
    other = Stream(["b1", "b2"], [0.0, 10.0])
    with pytest.raises(ValueError, match="boom"):
        await _all([failing, other])
    assert other.closed and not other.ended


async def test_leaving_early_closes_every_stream() -> None:
    streams = [Stream(["a1", "a2"], [0.0, 10.0]), Stream(["b1", "b2"], [0.0, 10.0])]
    async with aclosing(merge_streams([s.run() for s in streams])) as merged:
        async for _ in merged:
            break
    assert all(s.closed for s in streams)
