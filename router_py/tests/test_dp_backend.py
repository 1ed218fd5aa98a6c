"""DataParallelBackend over two replicas, each a fake shard over real Unix-socket gRPC with its own batcher and
real scheduler: requests sharing a prefix land on one replica and hit its cache, outputs equal one replica's,
each replica's metrics carry its label, replicas that differ are refused."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from router_py.engine.dp_backend import DataParallelBackend, common_info
from router_py.metrics import Metrics
from router_py.shard_client.fake_shard import FakeOptions
from router_py.tests.test_batcher import Stack, close, collect, make_stack, request, text_of

PREFIX = " ".join(f"w{i}" for i in range(320))  # 320 words = 320 fake tokens = 20 blocks of 16


@dataclasses.dataclass
class Replicas:
    stacks: list[Stack]
    backend: DataParallelBackend
    metrics: Metrics


@pytest.fixture
async def dp(tmp_path: Path) -> AsyncIterator[Replicas]:
    metrics = Metrics()  # NOTE: one registry, each replica's batcher writing a labeled view (as cli.serve)
    stacks = [await make_stack(folder(tmp_path, f"r{g}"), metrics=metrics.labeled(replica=str(g))) for g in range(2)]
    backend = DataParallelBackend([s.batcher for s in stacks])
    yield Replicas(stacks, backend, metrics)
    for s in stacks:
        await close(s)


def folder(tmp: Path, name: str) -> Path:
    (tmp / name).mkdir()
    return tmp / name


def prompts_on(s: Stack) -> list[str]:
    return [r.inputs for r in s.shard.received]


async def test_requests_sharing_a_prefix_land_on_one_replica_and_hit(dp: Replicas) -> None:
    await collect(dp.backend, request(PREFIX + " first", max_new_tokens=2))
    same = [request(PREFIX + f" q{i}", max_new_tokens=3) for i in range(4)]
    await asyncio.gather(*(collect(dp.backend, r) for r in same))
    counts = [sum(p.startswith(PREFIX) for p in prompts_on(s)) for s in dp.stacks]
    assert sorted(counts) == [0, 5], counts
    home = dp.stacks[counts.index(5)]
    assert all(r.cache_len >= 304 for r in home.shard.received[1:])  # the prefix's blocks were reused
    assert all(load.running == 0 and not load.inflight for load in dp.backend.chooser.loads)


async def test_without_prefix_caching_a_shared_prefix_goes_by_load(dp: Replicas) -> None:
    """Nothing is reused with the cache off, so prompts in flight must not pull their twins to one replica."""
    backend = DataParallelBackend([s.batcher for s in dp.stacks], prefix_caching=False)
    same = [request(PREFIX + f" q{i}", max_new_tokens=3) for i in range(4)]
    await asyncio.gather(*(collect(backend, r) for r in same))
    assert sorted(len(prompts_on(s)) for s in dp.stacks) == [2, 2]
    assert all(load.running == 0 and not load.inflight for load in backend.chooser.loads)


async def test_a_lost_replica_gets_no_new_requests_while_the_other_serves(dp: Replicas) -> None:
    """The replica caching a prefix loses its shard (not restarted here): new requests with that prefix are
    served by the other replica at once instead of waiting for the lost one (--shard-recovery-timeout, 120 s)."""
    await collect(dp.backend, request(PREFIX + " first", max_new_tokens=2))
    home = next(g for g, s in enumerate(dp.stacks) if prompts_on(s))
    await dp.stacks[home].cluster.stop()
    for _ in range(500):
        if dp.stacks[home].batcher.shard_lost():
            break
        await asyncio.sleep(0.01)
    same = [request(PREFIX + f" q{i}", max_new_tokens=3) for i in range(3)]
    await asyncio.wait_for(asyncio.gather(*(collect(dp.backend, r) for r in same)), 5)
    assert len(prompts_on(dp.stacks[1 - home])) == 3
    assert all(load.running == 0 and not load.inflight for load in dp.backend.chooser.loads)


async def test_unrelated_prompts_use_both_replicas(dp: Replicas) -> None:
    for i in range(4):
        await collect(dp.backend, request(f"{'t' * (i + 2)} " * 20, max_new_tokens=2))  # NOTE: fake ids: word lengths
    assert all(prompts_on(s) for s in dp.stacks)


async def test_outputs_equal_a_single_replica(dp: Replicas, tmp_path: Path) -> None:
    prompts = [(PREFIX + f" x{i}" if i % 2 else f"other {i} " * (i + 1), 2 + i % 5) for i in range(10)]
    solo_stack = await make_stack(folder(tmp_path, "solo"))
    try:
        solo = [text_of(await collect(solo_stack.batcher, request(p, n))) for p, n in prompts]
    finally:
        await close(solo_stack)
    together = await asyncio.gather(*(collect(dp.backend, request(p, n)) for p, n in prompts))
    assert [text_of(evs) for evs in together] == solo


async def test_each_replica_reports_under_its_label(dp: Replicas) -> None:
    for i in range(4):
        await collect(dp.backend, request(f"{'t' * (i + 2)} " * 20, max_new_tokens=2))
    text = dp.metrics.render()
    for g in ("0", "1"):
        assert f'prism_prefix_cache_queried_tokens{{replica="{g}"}}' in text
        assert dp.metrics.value("tgi_batch_inference_success", method="prefill", replica=g) >= 1
    assert await dp.backend.health()


async def test_replicas_that_differ_are_refused(tmp_path: Path) -> None:
    a = await make_stack(folder(tmp_path, "a"))
    b = await make_stack(folder(tmp_path, "b"), FakeOptions(block_size=8, num_blocks=512))
    try:
        with pytest.raises(ValueError, match="differ"):
            DataParallelBackend([a.batcher, b.batcher])
    finally:
        await close(a)
        await close(b)
    info = a.batcher.info
    smaller = dataclasses.replace(info, max_total_tokens=info.max_total_tokens - 1)
    assert common_info([info, smaller]).max_total_tokens == info.max_total_tokens - 1


async def test_each_prompt_is_hashed_once(dp: Replicas, monkeypatch: pytest.MonkeyPatch) -> None:
    """The replica's scheduler reuses the hashes the replica choice computed (ValidRequest.block_hashes), and
    they are the ones it would have computed itself: the prefix still hits."""
    import prism_cache.allocator as allocator_module
    import router_py.engine.dp_backend as dp_module

    calls: list[int] = []

    def counted(real):
        def hashed(namespace, tokens, block_size):
            calls.append(len(tokens))
            return real(namespace, tokens, block_size)
        return hashed

    monkeypatch.setattr(dp_module, "block_hashes", counted(dp_module.block_hashes))
    monkeypatch.setattr(allocator_module, "block_hashes", counted(allocator_module.block_hashes))
    await collect(dp.backend, request(PREFIX + " first", max_new_tokens=2))
    await collect(dp.backend, request(PREFIX + " again", max_new_tokens=2))
    assert calls == [321, 321], calls  # NOTE: once per request (release and cache_prompt reuse them too)
    home = next(s for s in dp.stacks if s.shard.received)
    assert home.shard.received[-1].cache_len >= 304


async def test_replicas_warm_up_concurrently() -> None:
    """cli.serve hands every replica's client to handshake_all: their Warmups overlap (each waits until all
    have started, which would deadlock one after another) and results keep the clients' order."""
    from router_py.engine.backend_config import BackendConfig
    from router_py.engine.warmup import handshake_all
    from router_py.shard_client.messages import ShardInfo, WarmupResult

    started: list[int] = []
    all_in = asyncio.Event()

    class Client:
        def __init__(self, g: int) -> None:
            self.g = g

        async def clear_cache(self, batch_id: int | None) -> None:
            return None

        async def info(self) -> ShardInfo:
            return ShardInfo(False, "float32", "cpu", None, 0, True, True, "paged", 16)

        async def warmup(self, batch, max_input, max_prefill, max_total) -> WarmupResult:
            started.append(self.g)
            if len(started) == 3:
                all_in.set()
            await asyncio.wait_for(all_in.wait(), 5)
            return WarmupResult(16 * (400 + self.g), 1000, 1001 + self.g)

    got = await handshake_all([Client(g) for g in range(3)], BackendConfig())  # type: ignore[misc]
    assert [info.max_total_tokens for info, _ in got] == [1001, 1002, 1003]
