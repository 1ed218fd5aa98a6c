"""ActiveRequest's delivery to the client queue: one loop turn later, in order (so that the batcher's next
Decode is sent before the client streams run)."""

from __future__ import annotations

import asyncio

from router_py.backend_api import InferError, Token, TokenEvent
from router_py.engine.active_request import ActiveRequest
from router_py.tests.test_batcher import request


def _token(i: int) -> TokenEvent:
    return TokenEvent(token=Token(id=i, text=str(i), logprob=0.0))


def test_events_arrive_one_loop_turn_later_in_order() -> None:
    async def run() -> tuple[int, list[object], bool]:
        state = ActiveRequest(request=request("a b c"), queued_at=0.0)
        state.emit(_token(1))
        state.emit(_token(2))
        state.fail(InferError("generation", "boom"))
        before = state.events.qsize()  # nothing yet: the caller's next await (the Decode) runs first
        await asyncio.sleep(0)
        return before, [state.events.get_nowait() for _ in range(3)], state.ended

    before, items, ended = asyncio.run(run())
    assert before == 0
    assert [getattr(i, "token", None) and i.token.id for i in items[:2]] == [1, 2]
    assert isinstance(items[2], InferError) and ended


def test_without_a_running_loop_events_are_put_at_once() -> None:
    state = ActiveRequest(request=request("a"), queued_at=0.0)
    state.emit(_token(7))
    assert state.events.get_nowait().token.id == 7


def test_one_turn_delivers_every_mailbox_in_order() -> None:
    async def run() -> list[tuple[int, int]]:
        a = ActiveRequest(request=request("a"), queued_at=0.0)
        b = ActiveRequest(request=request("b"), queued_at=0.0)
        for i in range(3):
            a.emit(_token(i))
            b.emit(_token(10 + i))
        await asyncio.sleep(0)
        return [(a.events.qsize(), b.events.qsize())] + [
            ((await a.events.get()).token.id, (await b.events.get()).token.id) for _ in range(3)
        ]

    assert asyncio.run(run()) == [(3, 3), (0, 10), (1, 11), (2, 12)]


def test_a_cancelled_wait_loses_nothing() -> None:
    async def run() -> int:
        state = ActiveRequest(request=request("a"), queued_at=0.0)
        waiting = asyncio.ensure_future(state.events.get())
        await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        state.emit(_token(5))
        got = await asyncio.wait_for(state.events.get(), 1)
        return got.token.id

    assert asyncio.run(run()) == 5
