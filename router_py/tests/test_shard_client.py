"""ShardClient against fake shards over real Unix sockets: discovery, fan-out and merging, pb <-> plain data,
errors, trace metadata; and the Warmup handshake's settling and startup checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from router_py import tracing
from router_py.engine.backend_config import BackendConfig
from router_py.backend_api import ChooserParams
from router_py.shard_client.client import ShardClient, ShardError
from router_py.engine.health import PROBE_BATCH
from proto.generate.v3 import generate_pb2 as pb
from router_py.shard_client.messages import CachedBatch, RequestBatch, ShardInfo, ShardRequest, WarmupResult
from router_py.shard_client.fake_shard import FakeCluster, FakeOptions
from router_py.engine.warmup import StartupError, fit_prefill_budget, handshake, settle, warmup_batch


async def start(tmp: Path, world: int = 1, **opts) -> tuple[FakeCluster, ShardClient]:
    cluster = await FakeCluster(str(tmp / "s"), world, FakeOptions(**opts)).start()
    return cluster, await ShardClient.connect(cluster.master_path)


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[tuple[FakeCluster, ShardClient]]:
    cluster, client = await start(tmp_path, world=2)
    yield cluster, client
    await client.close()
    await cluster.stop()


def batch(batch_id: int, n: int, max_new: int = 3) -> RequestBatch:
    reqs = tuple(
        ShardRequest(id=batch_id * 10 + i, inputs=f"p {i}", truncate=2, sampling=ChooserParams(seed=i),
                     max_new_tokens=max_new, blocks=(1 + i,), slots=(16 * (1 + i),), cache_len=0)
        for i in range(n)
    )
    return RequestBatch(id=batch_id, requests=reqs, max_tokens=2 * n, max_blocks=1)


async def test_discovery_connects_to_every_shard(two) -> None:
    cluster, client = two
    assert client.num_shards == 2
    assert cluster.shards[0].calls == ["ServiceDiscovery"] and cluster.shards[1].calls == []
    await client.health()
    assert [s.calls[-1] for s in cluster.shards] == ["Health", "Health"]


async def test_prefill_takes_rank_0_generations_and_slowest_timings(two) -> None:
    cluster, client = two
    result = await client.prefill(batch(0, 3))
    # NOTE: both fake ranks emit every request (tensor parallelism); the router keeps rank 0's, once each
    assert [g.request_id for g in result.generations] == [0, 1, 2]
    assert result.total_ns == 2001 and result.forward_ns == 1001  # rank 1 is the slow one
    assert result.batch is not None and result.batch.request_ids == (0, 1, 2)
    sent = cluster.shards[1].received[2]
    assert (list(sent.blocks), list(sent.slots), sent.parameters.seed) == ([3], [48], 2)
    assert not sent.HasField("chunk_len") and not sent.HasField("adapter_id")


async def test_decode_concatenates_batches_and_filter_keeps_ids(two) -> None:
    _, client = two
    a = (await client.prefill(batch(0, 2))).batch
    b = (await client.prefill(batch(1, 1))).batch
    assert a is not None and b is not None
    step = await client.decode([a, b])
    assert step.batch is not None and step.batch.id == 0 and step.batch.request_ids == (0, 1, 10)
    token = step.generations[0].tokens[0]
    assert token.logprob == -0.5 and token.text.startswith(" w")
    kept = await client.filter_batch(0, [10])
    assert kept.request_ids == (10,) and kept.size == 1
    done = await client.decode([kept])
    assert done.generations[0].generated_text is not None
    assert done.generations[0].generated_text.finish_reason == "length"
    assert done.generations[0].generated_text.seed is None


class _SlowRank:
    """A stub of one tensor-parallel rank that records the model steps in the order it starts them; its
    Decode starts ``decode_delay_s`` after the call (a rank busy elsewhere, or a Prefill's tokenizing thread
    reaching the step lock first on the other rank)."""

    def __init__(self, decode_delay_s: float, order: list[str]) -> None:
        self.decode_delay_s, self.order = decode_delay_s, order

    async def Prefill(self, request, metadata):  # noqa: N802
        self.order.append("Prefill")
        await asyncio.sleep(0.01)
        return pb.PrefillResponse()

    async def Decode(self, request, metadata):  # noqa: N802
        if self.decode_delay_s:
            await asyncio.sleep(self.decode_delay_s)
        self.order.append("Decode")
        await asyncio.sleep(0.01)
        return pb.DecodeResponse()


async def test_tensor_parallel_ranks_run_concurrent_steps_in_one_order(two) -> None:
    """/health's Prefill probe (after a generation failure) runs while the batching loop decodes. The ranks
    pair their collectives by call order: a rank that ran the probe first and the Decode second, while the
    other ran them the other way round, mixed the two batches' activations (on the real gloo group: wrong
    greedy tokens, no error). Each step must reach every rank in the same order."""
    _, client = two
    orders: list[list[str]] = [[], []]
    client._stubs = [_SlowRank(0.0, orders[0]), _SlowRank(0.05, orders[1])]
    cached = CachedBatch(id=1, request_ids=(10,), max_tokens=4, current_tokens=2)
    await asyncio.gather(client.decode([cached]), client.prefill(PROBE_BATCH))
    assert orders[0] == orders[1], orders


async def test_prefill_tokens_nan_becomes_none(two) -> None:
    _, client = two
    b = batch(0, 1)
    req = b.requests[0]
    b = RequestBatch(id=0, requests=(ShardRequest(**{**req.__dict__, "prefill_logprobs": True}),), max_tokens=2,
                   max_blocks=1)
    gen = (await client.prefill(b)).generations[0]
    assert [t.logprob for t in gen.prefill_tokens] == [None, -1.0]


async def test_rpc_error_raises_shard_error_with_details(two) -> None:
    cluster, client = two
    with pytest.raises(ShardError) as err:
        await client.filter_batch(99, [1])
    assert err.value.rpc == "FilterBatch" and err.value.details == "Batch ID 99 not found in cache."
    cluster.shards[1].fail_next.add("Health")
    with pytest.raises(ShardError, match="injected Health failure"):
        await client.health()


async def test_clear_cache_one_or_all(two) -> None:
    cluster, client = two
    await client.prefill(batch(0, 1))
    await client.prefill(batch(1, 1))
    await client.clear_cache(0)
    assert list(cluster.shards[0].batches) == [1]
    await client.clear_cache()
    assert cluster.shards[0].batches == {} and cluster.shards[1].batches == {}


async def test_trace_context_travels_as_grpc_metadata(two) -> None:
    cluster, client = two
    tracing.setup_tracing(None, "test", exporter=InMemorySpanExporter())
    try:
        with tracing.span("request"):
            await client.health()
    finally:
        tracing.setup_tracing(None, "test")
    assert "traceparent" in cluster.shards[0].metadata[-1]
    await client.health()
    assert "traceparent" not in cluster.shards[0].metadata[-1]


async def test_connect_to_missing_socket_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ShardError) as err:
        await ShardClient.connect(str(tmp_path / "nothing-0"))
    assert err.value.rpc == "ServiceDiscovery"


async def test_warmup_takes_the_minimum_over_shards(two) -> None:
    cluster, client = two
    cluster.shards[1].options = FakeOptions(num_blocks=10)
    result = await client.warmup(warmup_batch(BackendConfig(100, 200, 300)), 100, 300, 200)
    assert result == WarmupResult(max_supported_total_tokens=160, max_input_tokens=100, max_total_tokens=200)


# ---- warmup batch and settling ------------------------------------------------------------------------------


def test_warmup_batch_splits_the_prefill_budget_by_max_input() -> None:
    b = warmup_batch(BackendConfig(max_input_tokens=100, max_total_tokens=150, max_batch_prefill_tokens=250))
    assert [r.truncate for r in b.requests] == [100, 100, 50]
    assert [r.max_new_tokens for r in b.requests] == [50, 50, 100]
    r = b.requests[0]
    assert r.inputs == "_test " * 100 and r.ignore_eos_token and r.prefill_logprobs and r.top_n_tokens == 20
    assert not r.blocks and not r.slots and (b.id, b.max_tokens) == (0, 100)


SHARD = ShardInfo(requires_padding=False, dtype="f32", device_type="cpu", window_size=None, speculate=0,
                  support_chunking=True, use_prefix_caching=True, attention_impl="paged", block_size=16)


def test_settle_uses_kv_capacity_on_paged_shards() -> None:
    info = settle(BackendConfig(max_batch_total_tokens=5), SHARD, WarmupResult(8192, 4095, 4096))
    assert (info.max_input_tokens, info.max_total_tokens, info.max_batch_total_tokens) == (4095, 4096, 8192)


def test_settle_lowers_a_shard_chosen_total_to_what_one_request_can_hold() -> None:
    """A shard that counts the reserved block 0 in its capacity (TGI's) and chose max_total = capacity: a
    request of that size could never be admitted, so the router lowers the limit (issue 16 item 1)."""
    info = settle(BackendConfig(), SHARD, WarmupResult(4096, 4095, 4096))
    assert (info.max_input_tokens, info.max_total_tokens) == (4080, 4081)


def test_settle_refuses_a_user_total_that_cannot_fit_the_pool() -> None:
    with pytest.raises(StartupError, match="cannot fit the KV pool"):
        settle(BackendConfig(max_total_tokens=4096), SHARD, WarmupResult(4096, 4095, 4096))


def test_settle_padded_shard_defaults_batch_total_to_16000() -> None:
    padded = ShardInfo(**{**SHARD.__dict__, "requires_padding": True, "support_chunking": False})
    info = settle(BackendConfig(100, 200, max_batch_prefill_tokens=300), padded, WarmupResult(None, 100, 200))
    assert info.max_batch_total_tokens == 16000 and info.requires_padding


@pytest.mark.parametrize(
    ("config", "shard", "result", "message"),
    [
        (BackendConfig(), SHARD, WarmupResult(1000, 1000, 2000), "`max_total_tokens` must be <= "),
        (BackendConfig(100, 200), SHARD, WarmupResult(8192, 99, 200), "settled `max_input_tokens` to 99"),
        (BackendConfig(), SHARD, WarmupResult(8192, 300, 300), "`max_input_tokens` must be < `max_total_tokens`"),
        (BackendConfig(max_batch_prefill_tokens=9000), SHARD, WarmupResult(8192, 100, 200),
         "`max_batch_prefill_tokens` must be <= `max_batch_total_tokens`"),
        (BackendConfig(max_batch_prefill_tokens=50), ShardInfo(**{**SHARD.__dict__, "support_chunking": False}),
         WarmupResult(8192, 100, 200), "`max_batch_prefill_tokens` must be >= `max_input_tokens`"),
    ],
)
def test_settle_rejects_inconsistent_limits(config, shard, result, message) -> None:
    with pytest.raises(StartupError, match=message.replace("`", ".")):
        settle(config, shard, result)


# ---- the default prefill budget follows a small KV pool ----------------------------------------------------


async def test_an_unset_prefill_budget_fits_a_small_kv_pool(tmp_path: Path) -> None:
    """The router's flags without --max-batch-prefill-tokens against a pool of 64 blocks (1,008 usable
    tokens): Warmup runs with, and the router settles, 1,008 tokens, where TGI's default of 4,096 failed."""
    from router_py import cli

    cluster, client = await start(tmp_path, num_blocks=64)
    try:
        info, _ = await handshake(client, cli.backend_config(cli.parse_args([])))
    finally:
        await client.close()
        await cluster.stop()
    assert info.max_batch_prefill_tokens == 63 * 16
    warmup = cluster.shards[0].warmups[-1]
    assert warmup.max_prefill_tokens == 63 * 16
    assert sum(r.truncate for r in warmup.batch.requests) == 63 * 16


async def test_a_prefill_budget_the_user_set_is_kept_and_refused_when_the_pool_cannot_hold_it(
    tmp_path: Path,
) -> None:
    from router_py import cli

    cluster, client = await start(tmp_path, num_blocks=64)
    config = cli.backend_config(cli.parse_args(["--max-batch-prefill-tokens", "4096"]))
    try:
        with pytest.raises(StartupError, match=".max_batch_prefill_tokens. must be <= .max_batch_total"):
            await handshake(client, config)
        assert cluster.shards[0].warmups[-1].max_prefill_tokens == 4096
    finally:
        await client.close()
        await cluster.stop()


@pytest.mark.parametrize(
    ("capacity", "max_input", "budget"),
    [
        (64 * 16, None, 63 * 16),  # one warmup prompt: every block but block 0
        (256 * 16, 100, 36 * 100 + 3 * 16),  # prompts of 100 take 7 blocks each: 36 in 255, 3 blocks left
        (1024 * 16, None, 4096),  # a pool that holds the default keeps it
        (0, None, 4096),  # a shard that does not report its pool (TGI's): TGI's default
    ],
)
def test_the_default_prefill_budget_is_what_the_pool_holds(
    capacity: int, max_input: int | None, budget: int
) -> None:
    shard = ShardInfo(**{**SHARD.__dict__, "kv_capacity_tokens": capacity})
    config = fit_prefill_budget(BackendConfig(max_input, max_batch_prefill_tokens_set=False), shard)
    assert config.max_batch_prefill_tokens == budget
    if capacity:
        blocks = sum(-(-r.truncate // 16) for r in warmup_batch(config).requests)
        assert blocks <= capacity // 16 - 1  # the warmup batch fits beside block 0
    assert fit_prefill_budget(BackendConfig(max_input), shard).max_batch_prefill_tokens == 4096  # set: kept


@pytest.mark.parametrize("special", [[], [True], [False]])
@pytest.mark.parametrize("logprob", [-0.25, float("nan")])
def test_one_token_converts_as_the_general_path(special: list[bool], logprob: float) -> None:
    from proto.generate.v3 import generate_pb2 as pb
    from router_py.backend_api import Token
    from router_py.shard_client.client import _tokens_from_pb

    one = pb.Tokens(ids=[7], logprobs=[logprob], texts=[" é"], is_special=special)
    two = pb.Tokens(ids=[7, 7], logprobs=[logprob] * 2, texts=[" é"] * 2, is_special=special * 2)
    flag = bool(special and special[0])
    expected = Token(id=7, text=" é", logprob=None if logprob != logprob else logprob, special=flag)
    assert _tokens_from_pb(one) == (expected,) and _tokens_from_pb(two) == (expected, expected)
    assert _tokens_from_pb(pb.Tokens()) == ()
