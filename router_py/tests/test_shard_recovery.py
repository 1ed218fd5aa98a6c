"""A lost shard (its gRPC server goes away, as when the process is killed) and its restart at the same socket:
in-flight requests fail with 424 at once, /health is false while it is gone, queued requests are kept and
served by the restarted shard with an empty prefix cache (its KV pool holds nothing), or refused with a clear
error past ``shard_recovery_timeout_s``; no block is leaked."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from router_py.shard_client.fake_shard import FakeCluster, FakeOptions
from router_py.backend_api import EndEvent, InferError
from router_py.tests.test_batcher import Stack, close, collect, drained, make_stack, request

OPTIONS = FakeOptions(step_delay_s=0.01)
PROMPT = " ".join(f"w{i}" for i in range(40))  # 40 tokens: 2 full blocks of 16 to cache


async def restart(s: Stack, tmp: Path) -> None:
    s.cluster = await FakeCluster(str(tmp / "shard"), 1, OPTIONS).start()


async def wait_for(predicate, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def blocks(s: Stack, state: str) -> float:
    return s.metrics.value("prism_prefix_cache_blocks", state=state)


async def test_lost_shard_fails_running_keeps_queued_and_serves_after_restart(tmp_path: Path) -> None:
    s = await make_stack(tmp_path, OPTIONS)
    try:
        await collect(s.batcher, request(PROMPT + " first", max_new_tokens=2))
        await drained(s)
        assert blocks(s, "cached") >= 2
        running = asyncio.ensure_future(collect(s.batcher, request(PROMPT + " long", max_new_tokens=500)))
        await wait_for(lambda: s.metrics.value("tgi_batch_current_size") == 1)
        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        await s.cluster.stop()
        with pytest.raises(InferError) as err:
            await running
        assert loop.time() - killed_at < 1.0
        assert err.value.error_type == "generation" and err.value.message.startswith("Server error: ")
        assert not await s.batcher.health()
        queued = asyncio.ensure_future(collect(s.batcher, request(PROMPT + " queued", max_new_tokens=3)))
        await asyncio.sleep(0.3)
        assert not queued.done() and not await s.batcher.health()
        await restart(s, tmp_path)
        events = await asyncio.wait_for(queued, 10)
        assert isinstance(events[-1], EndEvent) and events[-1].generated_tokens == 3
        assert await s.batcher.health()
        (served,) = s.cluster.shards[0].received
        assert served.cache_len == 0, "the restarted shard holds no KV: no prefix may count as cached"
        assert s.metrics.value("prism_shard_recoveries") == 1
        await wait_for(lambda: s.metrics.value("tgi_batch_current_size") == 0)
        assert blocks(s, "in_use") == 0
        assert blocks(s, "cached") == 2  # only the queued request's prompt, not the lost shard's
    finally:
        await close(s)


async def test_requests_waiting_past_the_timeout_are_refused_until_the_shard_is_back(tmp_path: Path) -> None:
    s = await make_stack(tmp_path, OPTIONS, shard_recovery_timeout_s=0.3)
    try:
        await collect(s.batcher, request("a b c", max_new_tokens=2))
        await s.cluster.stop()
        await wait_for(lambda: s.batcher._health.down)
        with pytest.raises(InferError) as err:
            await asyncio.wait_for(collect(s.batcher, request("d e f", max_new_tokens=2)), 5)
        assert "the shard is down and did not come back in time" in err.value.message
        with pytest.raises(InferError):  # refused at once now
            await asyncio.wait_for(collect(s.batcher, request("g h", max_new_tokens=2)), 0.5)
        await restart(s, tmp_path)
        await wait_for(s.batcher._health.generation_healthy.__bool__)
        await wait_for(lambda: not s.batcher._health.down)
        events = await asyncio.wait_for(collect(s.batcher, request("i j k", max_new_tokens=2)), 5)
        assert isinstance(events[-1], EndEvent)
    finally:
        await close(s)


async def test_a_stop_refuses_the_requests_waiting_for_a_lost_shard_at_once(tmp_path: Path) -> None:
    """The launcher stops the router when it gives up on a shard; the router drains its streams first, so a
    request waiting for the shard must end then, not after the recovery timeout."""
    s = await make_stack(tmp_path, OPTIONS, shard_recovery_timeout_s=600)
    try:
        await collect(s.batcher, request("a b c", max_new_tokens=2))
        await s.cluster.stop()
        await wait_for(lambda: s.batcher._health.down)
        waiting = asyncio.ensure_future(collect(s.batcher, request("d e f", max_new_tokens=2)))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        s.batcher.begin_stop()
        with pytest.raises(InferError) as err:
            await asyncio.wait_for(waiting, 0.5)
        assert "the shard is down" in err.value.message
        with pytest.raises(InferError):  # and new ones at once
            await asyncio.wait_for(collect(s.batcher, request("g h", max_new_tokens=2)), 0.5)
        assert s.metrics.value("tgi_queue_size") == 0
    finally:
        await close(s)


async def test_a_stop_with_the_shard_up_serves_what_waits_until_the_shard_is_lost(tmp_path: Path) -> None:
    s = await make_stack(tmp_path, OPTIONS, shard_recovery_timeout_s=600)
    try:
        s.batcher.begin_stop()
        events = await asyncio.wait_for(collect(s.batcher, request("a b c", max_new_tokens=3)), 5)
        assert isinstance(events[-1], EndEvent) and events[-1].generated_tokens == 3
        await s.cluster.stop()  # lost while stopping: not waited for either
        await wait_for(lambda: s.batcher._health.down)
        with pytest.raises(InferError):
            await asyncio.wait_for(collect(s.batcher, request("d e f", max_new_tokens=2)), 1.0)
    finally:
        await close(s)
