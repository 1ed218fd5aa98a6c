"""The batching loop against fake shards over real Unix-socket gRPC, with a real scheduler wrapped in
:class:`RecordingScheduler` (which asserts the admit/release contract on every call)."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from router_py.engine.backend_config import BackendConfig
from router_py.engine.batcher import Batcher
from router_py.backend_api import (
    EndEvent,
    InferError,
    InferEvent,
    PrefillTokens,
    ChooserParams,
    StoppingParams,
    TokenEvent,
    ValidRequest,
)
from router_py.metrics import Metrics
from router_py.scheduling.interface import BatchPlan, SchedulerConfig
from router_py.scheduling.registry import make_scheduler
from router_py.shard_client.client import ShardClient
from router_py.shard_client.messages import U64_MAX
from router_py.shard_client.fake_shard import FakeCluster, FakeOptions
from router_py.tests.recording_scheduler import RecordingScheduler
from router_py.engine.warmup import handshake


def encode(text: str, add_special_tokens: bool = True) -> list[int]:
    """The fake shard's tokenization: one token per word."""
    return [len(w) + 3 * i % 7 for i, w in enumerate(text.split())]


def request(prompt: str, max_new_tokens: int = 8, **kw) -> ValidRequest:
    ids = tuple(encode(prompt))
    stop = kw.pop("stop", ())
    return ValidRequest(
        inputs=prompt, input_ids=ids, truncate=kw.pop("truncate", len(ids)), sampling=ChooserParams(),
        stopping=StoppingParams(max_new_tokens=max_new_tokens, stop_sequences=stop), **kw,
    )


@dataclasses.dataclass
class Stack:
    cluster: FakeCluster
    client: ShardClient
    batcher: Batcher
    scheduler: RecordingScheduler
    metrics: Metrics
    plans: list[BatchPlan]

    @property
    def shard(self):
        return self.cluster.shards[0]


async def make_stack(
    tmp: Path,
    options: FakeOptions | None = None,
    world: int = 1,
    metrics: Metrics | None = None,
    policy: tuple[str, str] = ("fcfs", "lru"),
    **config_kw,
) -> Stack:
    options = options or FakeOptions()
    cluster = await FakeCluster(str(tmp / "shard"), world, options).start()
    client = await ShardClient.connect(cluster.master_path)
    config = BackendConfig(**{"max_input_tokens": 2000, "max_total_tokens": 4000, **config_kw})
    info, shard = await handshake(client, config)
    num_blocks = None if shard.requires_padding else info.max_batch_total_tokens // shard.block_size
    sched_config = SchedulerConfig(
        scheduler=policy[0], cache_policy=policy[1], num_blocks=num_blocks, block_size=shard.block_size,
        support_chunking=shard.support_chunking,
    )
    scheduler, plans = RecordingScheduler(make_scheduler(sched_config)), []
    metrics = Metrics() if metrics is None else metrics
    batcher = Batcher(client, info, config, scheduler, metrics, encode, on_plan=plans.append,
                      scheduler_factory=lambda: RecordingScheduler(make_scheduler(sched_config)))
    batcher.start()
    return Stack(cluster, client, batcher, scheduler, metrics, plans)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    s = await make_stack(tmp_path)
    yield s
    await close(s)


async def close(s: Stack) -> None:
    await s.batcher.stop()
    await s.client.close()
    await s.cluster.stop()


async def collect(batcher: Batcher, req: ValidRequest) -> list[InferEvent]:
    return [e async for e in batcher.generate_stream(req)]


async def drained(s: Stack) -> None:
    """Wait until the loop released everything, the shard holds no batch and the metrics say so."""
    for _ in range(200):
        idle = s.metrics.value("tgi_batch_current_size") == 0
        if idle and not s.scheduler.live and not any(sh.batches for sh in s.cluster.shards):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not drained: live={s.scheduler.live} batches={s.shard.batches}")


def text_of(events: list[InferEvent]) -> str:
    return "".join(e.token.text for e in events if isinstance(e, TokenEvent))


async def test_generates_tokens_then_end_event_and_releases(stack: Stack) -> None:
    events = await collect(stack.batcher, request("a b c d", max_new_tokens=5))
    assert [type(e) for e in events] == [TokenEvent] * 4 + [EndEvent]
    end = events[-1]
    assert isinstance(end, EndEvent)
    assert (end.generated_tokens, end.finish_reason, end.seed) == (5, "length", None)
    assert end.generated_text == text_of(events)
    assert end.started_at >= end.queued_at > 0
    await drained(stack)
    sent = stack.shard.received[-1]
    assert sent.cache_len == 0 and len(sent.slots) == 4 + 5 - 1 and list(sent.blocks)
    assert list(sent.input_ids) == list(encode("a b c d"))  # the shard need not tokenize again
    assert 'prism_prefix_cache_blocks{state="in_use"} 0' in stack.metrics.render()


async def test_concurrent_requests_match_their_solo_text(stack: Stack) -> None:
    prompts = [(f"p{i} " * (i % 5 + 1), 3 + i % 7) for i in range(24)]
    solo = [text_of(await collect(stack.batcher, request(p, n))) for p, n in prompts]
    together = await asyncio.gather(*(collect(stack.batcher, request(p, n)) for p, n in prompts))
    assert [text_of(evs) for evs in together] == solo
    await drained(stack)
    assert "FilterBatch" in stack.shard.calls  # shorter requests were filtered out of running batches


async def test_stop_sequence_finishes_with_stop_reason(stack: Stack) -> None:
    first = text_of(await collect(stack.batcher, request("x y", max_new_tokens=3)))
    events = await collect(stack.batcher, request("x y", max_new_tokens=10, stop=(first.split()[-1],)))
    end = events[-1]
    assert isinstance(end, EndEvent) and end.finish_reason == "stop_sequence" and end.generated_tokens == 3


async def test_long_generation_continues_past_1024_in_one_stream(stack: Stack) -> None:
    events = await collect(stack.batcher, request("go on", max_new_tokens=1030))
    end = events[-1]
    assert isinstance(end, EndEvent)
    assert end.generated_tokens == 1030 == len(events)
    assert end.generated_text == text_of(events)
    first, second = stack.shard.received[-2:]
    assert first.stopping_parameters.max_new_tokens == 1024
    assert second.stopping_parameters.max_new_tokens == 6
    assert second.input_chunks.chunks[0].text == "go on" + text_of(events[:1024])
    assert second.parameters.seed == first.parameters.seed
    await drained(stack)


async def test_continuation_prompt_is_cut_when_retokenizing_counts_more(tmp_path: Path) -> None:
    """Re-tokenizing ``inputs + text so far`` can count more tokens than were generated; the continuation's
    prompt is then cut from the left to what max_total_tokens leaves, and the client gets every token it asked
    for (before: the round was refused and generations past 3,072 tokens ended early with ``length``)."""
    s = await make_stack(tmp_path, max_input_tokens=3999, max_total_tokens=4000)
    s.batcher._encode = lambda text, add=True: encode(text) + [1] * (len(text.split()) // 5)
    try:
        events = await collect(s.batcher, request("go on", max_new_tokens=3998))
        end = events[-1]
        assert isinstance(end, EndEvent) and end.finish_reason == "length"
        assert end.generated_tokens == 3998 == len(events)
        assert end.generated_text == text_of(events)
        last = s.shard.received[-1]
        assert last.stopping_parameters.max_new_tokens == 3998 - 3072
        full = len(s.batcher._encode(last.input_chunks.chunks[0].text))
        assert last.truncate == 4000 - (3998 - 3072) < full  # cut from the left, as TGI's truncate
        await drained(s)
    finally:
        await close(s)


async def test_rounds_stop_at_max_total_tokens(tmp_path: Path) -> None:
    """A ``max_new_tokens`` past ``max_total_tokens`` (validation checks only its first 1,024) ends with
    ``length`` once the prompt and the generated tokens fill ``max_total_tokens``; before, the rounds went on
    past the model's budget, each cutting its prompt from the left."""
    s = await make_stack(tmp_path, max_input_tokens=2999, max_total_tokens=3000)
    try:
        req = request("go on", max_new_tokens=5000)
        events = await collect(s.batcher, req)
        end = events[-1]
        assert isinstance(end, EndEvent) and end.finish_reason == "length"
        assert end.generated_tokens == 3000 - req.input_length == len(events)
        await drained(s)
    finally:
        await close(s)


async def test_round_that_can_never_fit_the_pool_fails_at_once(tmp_path: Path) -> None:
    """A request reserving more blocks than the pool has besides the reserved block 0 fails with a
    validation error instead of waiting at the head of the queue; the next request is served."""
    s = await make_stack(tmp_path, FakeOptions(num_blocks=16), max_input_tokens=200, max_total_tokens=240,
                         max_batch_prefill_tokens=240)
    try:
        capacity = 15 * 16 + 1  # 15 usable blocks of 16 slots; a request reserves input + max_new - 1
        with pytest.raises(InferError) as err:
            await collect(s.batcher, request("w " * 200, max_new_tokens=capacity - 200 + 1))
        assert err.value.error_type == "validation"
        assert f"must be <= {capacity}" in err.value.message
        fits = request("w " * 200, max_new_tokens=capacity - 200)
        events = await asyncio.wait_for(collect(s.batcher, fits), 10)
        assert isinstance(events[-1], EndEvent)
        await drained(s)
    finally:
        await close(s)


async def test_the_batcher_runs_with_the_default_prefill_budget_fitted_to_the_pool(tmp_path: Path) -> None:
    """--max-batch-prefill-tokens unset, 64 blocks, prompts of at most 100 tokens (7 blocks each): the
    handshake settles 9 x 100 = 900 tokens, and each prefill step is planned within those, not 4,096."""
    s = await make_stack(tmp_path, FakeOptions(num_blocks=64), max_input_tokens=100, max_total_tokens=200,
                         max_batch_prefill_tokens_set=False)
    try:
        assert s.batcher.info.max_batch_prefill_tokens == 900
        assert s.batcher._config.max_batch_prefill_tokens == 900
        events = await asyncio.wait_for(collect(s.batcher, request("w " * 50, max_new_tokens=2)), 10)
        assert isinstance(events[-1], EndEvent)
        await drained(s)
    finally:
        await close(s)


async def test_health_tells_when_the_queue_is_stalled_or_the_loop_died(stack: Stack) -> None:
    assert await stack.batcher.health()
    real = stack.scheduler.next_batch
    stack.scheduler.next_batch = lambda *a, **k: None  # a scheduler bug: nothing admissible into an idle pool
    waiting = asyncio.ensure_future(collect(stack.batcher, request("a b", max_new_tokens=2)))
    await asyncio.sleep(0.05)
    assert not await stack.batcher.health()
    stack.scheduler.next_batch = real
    stack.batcher._wakeup.set()
    assert isinstance((await asyncio.wait_for(waiting, 10))[-1], EndEvent)
    assert await stack.batcher.health()
    stack.batcher._task.cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not await stack.batcher.health()


async def test_a_release_that_raises_ends_its_request_and_the_loop_goes_on(stack: Stack) -> None:
    """Before, a scheduler bug in ``release`` left the request's client waiting forever: the state was already
    forgotten when the loop's error handler looked for the requests to fail."""
    real, calls = stack.scheduler.release, []

    def broken(*args, **kwargs) -> None:
        calls.append(args[0])
        if len(calls) == 1:
            raise RuntimeError("a bug")
        real(*args, **kwargs)

    stack.scheduler.release = broken  # type: ignore[method-assign]
    first = await asyncio.wait_for(collect(stack.batcher, request("a b", max_new_tokens=2)), 10)
    assert isinstance(first[-1], EndEvent) and len(calls) == 1
    second = await asyncio.wait_for(collect(stack.batcher, request("a b c", max_new_tokens=3)), 10)
    assert isinstance(second[-1], EndEvent) and second[-1].generated_tokens == 3 and len(calls) == 2


async def test_client_gone_mid_stream_is_dropped_and_released(tmp_path: Path) -> None:
    s = await make_stack(tmp_path, FakeOptions(step_delay_s=0.005))
    try:
        keep = asyncio.create_task(collect(s.batcher, request("stay here", max_new_tokens=30)))
        stream = s.batcher.generate_stream(request("leave now", max_new_tokens=30))
        for _ in range(3):
            await stream.__anext__()
        await stream.aclose()
        events = await keep
        assert isinstance(events[-1], EndEvent) and events[-1].generated_tokens == 30
        await drained(s)
        assert s.metrics.value("tgi_request_failure", err="dropped") == 1
        assert len(s.scheduler.released) == 2
    finally:
        await close(s)


async def test_client_gone_before_its_last_token_is_released(tmp_path: Path) -> None:
    """The step that ends a dropped request carries its last generation: it is released then, not left
    running with its blocks and its cached path locked (which wedged the queue once the pool filled)."""
    s = await make_stack(tmp_path, FakeOptions(step_delay_s=0.005))
    try:
        for n in range(3):
            stream = s.batcher.generate_stream(request(f"leave at the end {n}", max_new_tokens=2))
            await stream.__anext__()
            await stream.aclose()
            await drained(s)
        assert s.metrics.value("tgi_request_failure", err="dropped") == 3
        assert len(s.scheduler.released) == 3 and not s.batcher._states
    finally:
        await close(s)


async def test_random_churn_leaves_nothing_held(tmp_path: Path) -> None:
    """Streams over shared prefixes that end, fail alone or lose their client at random points (queued, after
    any token, at the last), through a pool small enough to evict: once drained, every admitted request was
    released once, every other one cancelled, and no block is held."""
    s = await make_stack(tmp_path, FakeOptions(step_delay_s=0.002, num_blocks=32, poison_word="poison"),
                         policy=("qas", "dart"), max_input_tokens=200, max_total_tokens=256,
                         max_batch_prefill_tokens=512)
    rng = random.Random(7)
    # NOTE: the fake tokenization keys a token on its word's length and position, hence words of random length
    prefixes = [" ".join("p" * rng.randrange(1, 9) for _ in range(40)) for _ in range(3)]

    async def client(n: int) -> None:
        await asyncio.sleep(rng.random() * 0.05)
        words = [rng.choice(prefixes)] + ["u" * rng.randrange(1, 9) for _ in range(rng.randrange(1, 60))]
        if rng.random() < 0.1:
            words.append("poison")
        max_new = rng.randrange(1, 7)
        leave_after = rng.choice([None, 0, 1, max_new - 1, max_new])
        stream = s.batcher.generate_stream(request(" ".join(words), max_new_tokens=max_new))
        try:
            first = asyncio.ensure_future(stream.__anext__())
            if leave_after == 0:  # before its first token: queued or running
                await asyncio.sleep(rng.random() * 0.01)
                first.cancel()
            read, event = 0, await first
            while not isinstance(event, EndEvent) and (leave_after is None or read + 1 < leave_after):
                event, read = await stream.__anext__(), read + 1
        except (InferError, StopAsyncIteration, asyncio.CancelledError):
            pass
        finally:
            await stream.aclose()

    try:
        await asyncio.gather(*(client(n) for n in range(60)))
        await drained(s)
        admitted = {adm.request.id for plan in s.scheduler.plans for adm in plan.admissions}
        assert sorted(s.scheduler.released) == sorted(admitted)
        assert set(s.scheduler.cancelled) == {r.id for r in s.scheduler.enqueued} - admitted
        assert s.scheduler.cache_stats()["blocks_in_use"] == 0 and not s.batcher._states
    finally:
        await close(s)


@pytest.mark.parametrize("said", [True, False])
async def test_client_gone_during_a_chunked_prefill_caches_only_its_computed_chunks(
    tmp_path: Path, said: bool
) -> None:
    """A client that leaves while its prompt is still being prefilled in chunks: only the first chunk's KV
    was computed (the shard says 32 of 80 tokens), so only that chunk's blocks may enter the prefix cache
    (live, caching them all, every later request with that prompt read the uncomputed blocks as a hit and
    generated other greedy tokens); the next request with the prompt starts after them. A shard that does not
    say (TGI's): nothing of the prompt is cached."""
    s = await make_stack(tmp_path, FakeOptions(step_delay_s=0.05, prompt_computed=said), max_batch_prefill_tokens=32,
                         max_input_tokens=100, max_total_tokens=200)
    prompt = "w " * 80
    cached = 32 if said else 0
    try:
        stream = s.batcher.generate_stream(request(prompt, max_new_tokens=4))
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.02)  # its first Prefill (32 of 80 tokens) is running
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await stream.aclose()
        await drained(s)
        assert s.scheduler.released == [0] and s.scheduler.cache_stats()["blocks_cached"] == cached // 16
        events = await collect(s.batcher, request(prompt, max_new_tokens=4))
        assert isinstance(events[-1], EndEvent) and s.shard.received[-1].cache_len == cached
        await drained(s)
    finally:
        await close(s)


async def test_client_gone_during_a_whole_prefill_still_caches_its_prompt(tmp_path: Path) -> None:
    """The same departure during an unchunked Prefill: its step computed the whole prompt (a Generation came
    back), so the prompt's full blocks are cached as before."""
    s = await make_stack(tmp_path, FakeOptions(step_delay_s=0.05), max_input_tokens=100, max_total_tokens=200)
    try:
        stream = s.batcher.generate_stream(request("w " * 80, max_new_tokens=4))
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.02)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await stream.aclose()
        await drained(s)
        assert s.scheduler.cache_stats()["blocks_cached"] == 80 // 16
    finally:
        await close(s)


async def test_client_gone_while_queued_is_cancelled(tmp_path: Path) -> None:
    s = await make_stack(tmp_path, FakeOptions(step_delay_s=0.005), max_batch_size=1)
    try:
        running = asyncio.create_task(collect(s.batcher, request("first one", max_new_tokens=60)))
        waiting = s.batcher.generate_stream(request("second one", max_new_tokens=20))
        pending = asyncio.ensure_future(waiting.__anext__())
        await asyncio.sleep(0.03)
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)
        await waiting.aclose()
        await running
        await drained(s)
        assert s.scheduler.cancelled == [1] and s.scheduler.released == [0]
    finally:
        await close(s)


async def test_shard_error_fails_the_batch_and_health_probes(stack: Stack) -> None:
    stack.shard.fail_next.add("Decode")
    with pytest.raises(InferError) as err:
        await collect(stack.batcher, request("a b", max_new_tokens=4))
    assert err.value.error_type == "generation"
    assert err.value.message == "Server error: injected Decode failure"
    from router_py.http.errors import from_infer_error  # the HTTP layer adds TGI's prefix, once

    assert from_infer_error(err.value).body()["error"] == (
        "Request failed during generation: Server error: injected Decode failure"
    )
    await drained(stack)
    assert await stack.batcher.health()
    probe = stack.shard.received[-1]
    assert (probe.id, list(probe.blocks), list(probe.slots)) == (U64_MAX, [0], [0])
    calls = len(stack.shard.calls)
    assert await stack.batcher.health()
    assert stack.shard.calls[calls:] == ["Health"]
    events = await collect(stack.batcher, request("a b", max_new_tokens=4))
    assert isinstance(events[-1], EndEvent)


async def test_failed_probe_keeps_unhealthy(stack: Stack) -> None:
    stack.shard.fail_next.add("Prefill")
    with pytest.raises(InferError):
        await collect(stack.batcher, request("a b", max_new_tokens=4))
    stack.shard.fail_next.add("Prefill")
    assert not await stack.batcher.health()
    assert await stack.batcher.health()


async def test_padded_shard_without_blocks_concatenates_batches(tmp_path: Path) -> None:
    opts = FakeOptions(requires_padding=True, support_chunking=False, step_delay_s=0.002)
    s = await make_stack(tmp_path, opts, waiting_served_ratio=0.0, max_batch_prefill_tokens=2000)
    try:
        assert s.batcher.info.max_batch_total_tokens == 16000
        first = asyncio.create_task(collect(s.batcher, request("one two", max_new_tokens=100)))
        await asyncio.sleep(0.02)
        second = await collect(s.batcher, request("three four", max_new_tokens=5))
        assert isinstance(second[-1], EndEvent) and isinstance((await first)[-1], EndEvent)
        assert all(not r.blocks and not r.slots for r in s.shard.received)
        assert s.metrics.value("tgi_batch_concat", reason="backpressure") >= 1
        await drained(s)
    finally:
        await close(s)


async def test_chunked_prompt_gets_chunk_len_and_completes(tmp_path: Path) -> None:
    s = await make_stack(tmp_path, max_batch_prefill_tokens=32, max_input_tokens=100, max_total_tokens=200)
    try:
        events = await collect(s.batcher, request("w " * 50, max_new_tokens=4))
        assert isinstance(events[-1], EndEvent) and events[-1].generated_tokens == 4
        sent = s.shard.received[-1]
        assert sent.HasField("chunk_len") and sent.cache_len + sent.chunk_len < 50
        await drained(s)
    finally:
        await close(s)


async def test_two_shards_report_each_generation_once(tmp_path: Path) -> None:
    s = await make_stack(tmp_path, world=2)
    try:
        results = await asyncio.gather(*(collect(s.batcher, request(f"q {i}", 6)) for i in range(5)))
        assert all(isinstance(r[-1], EndEvent) and len(r) == 6 for r in results)
        await drained(s)
    finally:
        await close(s)


async def test_decoder_input_details_streams_prefill_tokens_first(stack: Stack) -> None:
    events = await collect(stack.batcher, request("a b", max_new_tokens=2, decoder_input_details=True))
    assert isinstance(events[0], PrefillTokens)
    assert events[0].tokens[0].logprob is None and events[0].tokens[1].logprob == -1.0
    assert stack.scheduler.enqueued[-1].use_prefix_cache is False


async def test_on_plan_sees_every_admission_and_metrics_are_recorded(stack: Stack) -> None:
    await collect(stack.batcher, request("a b c", max_new_tokens=2, top_n_tokens=1))
    await drained(stack)
    assert [a.request.id for p in stack.plans for a in p.admissions] == [0]
    text = stack.metrics.render()
    for name in ("prism_prefix_cache_queried_tokens", "prism_prefix_cache_hit_tokens",
                 "prism_prefix_cache_evictions", 'prism_prefix_cache_blocks{state="free"}',
                 "tgi_batch_max_total_tokens", 'tgi_batch_inference_success{method="decode"}',
                 "tgi_batch_current_size", "tgi_queue_size"):
        assert name in text
    stats = stack.scheduler.cache_stats()
    assert stack.metrics.value("prism_prefix_cache_queried_tokens") == stats["prompt_tokens_queried"]
    assert stack.metrics.value("prism_prefix_cache_blocks", state="free") == stats["blocks_free"]


async def test_skipped_tokens_summary_observes_every_generation(stack: Stack) -> None:
    """TGI's ``tgi_request_skipped_tokens``: per Generation, its tokens past the first, as a summary (TGI
    gives it no buckets); a fake shard answers one token per Generation, so 3 observations of 0."""
    events = await collect(stack.batcher, request("s k i p", max_new_tokens=3))
    assert isinstance(events[-1], EndEvent)
    lines = stack.metrics.render().splitlines()
    assert "# TYPE tgi_request_skipped_tokens summary" in lines
    assert 'tgi_request_skipped_tokens{quantile="1"} 0' in lines
    assert "tgi_request_skipped_tokens_sum 0" in lines and "tgi_request_skipped_tokens_count 3" in lines


async def test_eos_token_finishes_with_eos_reason(stack: Stack) -> None:
    first = await collect(stack.batcher, request("e o s", max_new_tokens=6))
    ids = [e.token.id for e in first if isinstance(e, TokenEvent)]
    stack.shard.options.eos_token_id = ids[2]
    events = await collect(stack.batcher, request("e o s", max_new_tokens=6))
    end = events[-1]
    assert isinstance(end, EndEvent) and (end.finish_reason, end.generated_tokens) == ("eos_token", 3)


async def test_a_request_failing_alone_in_the_shard_fails_only_itself(tmp_path: Path) -> None:
    s = await make_stack(tmp_path, FakeOptions(poison_word="poison", step_delay_s=0.01))
    try:
        good = [request(f"fine {i} words", max_new_tokens=6) for i in range(3)]
        results = await asyncio.gather(
            *(collect(s.batcher, r) for r in good), collect(s.batcher, request("a poison b", 6)),
            return_exceptions=True,
        )
        assert all(isinstance(r[-1], EndEvent) and r[-1].generated_tokens == 6 for r in results[:3])
        bad = results[3]
        assert isinstance(bad, InferError) and bad.error_type == "generation" and "poisoned" in bad.message
        from router_py.http.errors import from_infer_error  # the HTTP layer adds TGI's prefix, once

        body = from_infer_error(bad).body()["error"]
        assert body.startswith("Request failed during generation: Server error: poisoned")
        assert body.count("Request failed") == 1
        assert len(s.plans[0].admissions) == 4  # the poisoned request shared its batch with the others
        for method in ("prefill", "decode"):
            assert s.metrics.value("tgi_batch_inference_failure", method=method) == 0
        await drained(s)
    finally:
        await close(s)
