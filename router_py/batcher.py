"""TGI v3's batching loop (tgi-compat 1.5, 2.4, 2.5): the :class:`~router_py.infer_types.Backend` the HTTP
layer talks to.

The loop asks the scheduler for the next prefill batch, sends Prefill (merged into the running batch with
``cached_batch`` on chunking shards, prefilled alone and concatenated by the next Decode otherwise), then
Decode repeatedly; after each step it streams tokens to each request, drops requests that finished or whose
client went away, tells the shard with FilterBatch/ClearCache and releases ended requests to the scheduler
(which frees or caches their blocks). Every decision about what to admit, keep or evict is the scheduler's.
An RPC error fails every request of the batch (424) and makes ``/health`` probe with a real Prefill.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence

from router_py import tracing
from router_py.backend_config import DEFAULT_GENERATION_LENGTH, BackendConfig
from router_py.health import HealthCheck
from router_py.infer_types import (
    BackendInfo,
    EndEvent,
    InferError,
    InferEvent,
    PrefillTokens,
    TokenEvent,
    ValidRequest,
)
from router_py.metrics import Metrics
from router_py.request_state import RequestState
from router_py.scheduling import Admission, BatchPlan, SchedRequest, Scheduler
from router_py.shard_client import ShardClient, ShardError
from router_py.shard_types import CachedBatch, Generation, ShardBatch, ShardRequest, StepResult

log = logging.getLogger(__name__)

Encode = Callable[[str, bool], Sequence[int]]  # (text, add_special_tokens) -> router token ids


class Batcher:
    """Owns the scheduler and the shard batches of one router. Construct after the Warmup handshake
    (:func:`router_py.warmup.handshake`), then :meth:`start` the loop inside the serving event loop.

    ``encode`` tokenizes continuation prompts (``inputs + text so far``) for the prefix cache; ``on_plan`` is
    called with every BatchPlan before its Prefill is sent (the benchmark's sim-vs-server check uses it).
    """

    def __init__(
        self,
        client: ShardClient,
        info: BackendInfo,
        config: BackendConfig,
        scheduler: Scheduler,
        metrics: Metrics,
        encode: Encode,
        on_plan: Callable[[BatchPlan], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.info = info
        self._client, self._config, self._scheduler = client, config, scheduler
        self._metrics, self._encode, self._on_plan, self._clock = metrics, encode, on_plan, clock
        self._health = HealthCheck(client)
        self._states: dict[int, RequestState] = {}  # by current round id
        self._next_request_id = 0
        self._next_batch_id = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._cache_seen: dict[str, int] = {}
        metrics.set("tgi_batch_max_total_tokens", info.max_batch_total_tokens)
        self._record_cache_stats()

    # ---- Backend protocol ------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batching-loop")

    async def stop(self) -> None:
        """Cancel the loop; every request still in flight fails with a generation error."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for state in list(self._states.values()):
            state.fail(InferError("generation", "Request failed during generation: Server error: shutdown"))
        self._states.clear()

    async def generate_stream(self, request: ValidRequest) -> AsyncIterator[InferEvent]:
        state = RequestState(request=request, queued_at=self._clock())
        self._submit(state, request.inputs, request.input_ids)
        try:
            while True:
                item = await state.events.get()
                if isinstance(item, InferError):
                    raise item
                yield item
                if isinstance(item, EndEvent):
                    return
        finally:
            self._abandon(state)

    async def health(self) -> bool:
        return await self._health.check()

    # ---- queue side ------------------------------------------------------------------------------------

    def _submit(self, state: RequestState, inputs: str, input_ids: Sequence[int]) -> None:
        """Enqueue the next round of ``state`` under a fresh request id."""
        state.round_id, self._next_request_id = self._next_request_id, self._next_request_id + 1
        state.round_inputs = inputs
        state.round_max_new = min(state.remaining, DEFAULT_GENERATION_LENGTH)
        state.running = False
        self._states[state.round_id] = state
        req = state.request
        self._scheduler.enqueue(
            SchedRequest(
                id=state.round_id, prompt_ids=tuple(input_ids), max_new_tokens=state.round_max_new,
                arrival=self._clock(), namespace=req.namespace, use_prefix_cache=not req.decoder_input_details,
            ),
            self._clock(),
        )
        self._metrics.set("tgi_queue_size", self._scheduler.waiting_count())
        self._wakeup.set()

    def _abandon(self, state: RequestState) -> None:
        """The consumer stopped reading. Queued: cancel now; running: dropped at the next step."""
        if state.ended:
            return
        state.dropped = True
        if not state.running and self._scheduler.cancel(state.round_id):
            self._states.pop(state.round_id, None)
            state.ended = True
            self._metrics.inc("tgi_request_failure", err="dropped")
            self._metrics.set("tgi_queue_size", self._scheduler.waiting_count())

    # ---- the loop --------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                plan = self._next_plan(None, self._config.max_batch_prefill_tokens, min_size=0)
                if plan is None:
                    self._set_idle()
                    await self._wakeup.wait()
                    self._wakeup.clear()
                    continue
                cached = await self._prefill(plan, None)
                waiting_tokens = 1
                while cached is not None:
                    cached, waiting_tokens = await self._serve(cached, waiting_tokens)
            except Exception:  # NOTE: a bug must not kill the loop; the batch fails, the server goes on
                log.exception("batching loop error")
                running = [i for i, s in self._states.items() if s.running]
                await self._fail(None, running, "internal router error")

    async def _serve(self, cached: CachedBatch, waiting_tokens: int) -> tuple[CachedBatch | None, int]:
        """One turn of the inner loop: maybe admit a new batch, then one Decode over everything."""
        batches = [cached]
        if self.info.support_chunking:
            merged = await self._schedule(cached)
            if merged is not cached:
                if merged is None:
                    return None, 1
                batches = [merged]
        else:
            new, waiting_tokens = await self._schedule_padded(cached, waiting_tokens)
            if new is not None:
                batches.append(new)
        return await self._decode(batches), waiting_tokens + 1

    async def _schedule(self, cached: CachedBatch) -> CachedBatch | None:
        """Chunking shards: admit a new batch merged into ``cached`` (``Prefill(new, cached_batch)``). Returns
        the batch to continue with: ``cached`` itself when nothing was admitted."""
        prefill_budget = self._config.max_batch_prefill_tokens - cached.current_tokens
        plan = self._next_plan(cached, prefill_budget, min_size=0)
        if plan is None:
            return cached
        self._metrics.inc("tgi_batch_concat", reason="chunking")
        return await self._prefill(plan, cached)

    async def _schedule_padded(
        self, cached: CachedBatch, waiting_tokens: int
    ) -> tuple[CachedBatch | None, int]:
        """Non-chunking shards: a new batch is prefilled alone when enough requests wait (waiting_served_ratio)
        or the running batch waited ``max_waiting_tokens`` steps; the next Decode concatenates the two."""
        wait_exceeded = waiting_tokens >= self._config.max_waiting_tokens
        min_size = 0 if wait_exceeded else int(cached.size * self._config.waiting_served_ratio)
        plan = self._next_plan(cached, self._config.max_batch_prefill_tokens, min_size)
        if plan is None:
            return None, waiting_tokens
        self._metrics.inc("tgi_batch_concat", reason="wait_exceeded" if wait_exceeded else "backpressure")
        return await self._prefill(plan, None), 0

    def _next_plan(self, cached: CachedBatch | None, prefill_budget: int, min_size: int) -> BatchPlan | None:
        if self._scheduler.waiting_count() == 0:
            return None
        batch_size = cached.size if cached is not None else 0
        max_size = self._config.max_batch_size
        if max_size is not None:
            max_size -= batch_size
            if max_size <= 0:
                return None
        token_budget = self.info.max_batch_total_tokens - (cached.max_tokens if cached is not None else 0)
        if prefill_budget <= 0 or token_budget <= 0:
            return None
        plan = self._scheduler.next_batch(
            self._clock(), prefill_budget, token_budget, max_size=max_size, min_size=min_size
        )
        self._metrics.set("tgi_queue_size", self._scheduler.waiting_count())
        return plan

    # ---- RPC steps -------------------------------------------------------------------------------------

    async def _prefill(self, plan: BatchPlan, cached: CachedBatch | None) -> CachedBatch | None:
        if self._on_plan is not None:
            self._on_plan(plan)
        batch = self._shard_batch(plan)
        self._metrics.observe("tgi_batch_next_size", len(batch.requests))
        ids = [r.id for r in batch.requests] + list(cached.request_ids if cached is not None else ())
        batch_ids = [batch.id] + ([cached.id] if cached is not None else [])
        with tracing.span("prefill", id=batch.id, size=len(batch.requests)):
            return await self._step("prefill", self._client.prefill(batch, cached), batch_ids, ids)

    async def _decode(self, batches: list[CachedBatch]) -> CachedBatch | None:
        ids = [i for b in batches for i in b.request_ids]
        with tracing.span("decode", size=len(ids)):
            return await self._step("decode", self._client.decode(batches), [b.id for b in batches], ids)

    async def _step(
        self, method: str, call: Awaitable[StepResult], batch_ids: list[int], ids: list[int]
    ) -> CachedBatch | None:
        """Await one Prefill/Decode, stream its generations and filter the batch; fail it on any RPC error."""
        start = self._clock()
        self._metrics.inc("tgi_batch_inference_count", method=method)
        try:
            result = await call
            filter_start = self._clock()
            self._dispatch(result.generations)
            batch = await self._filter(result.batch)
        except ShardError as e:
            self._metrics.inc("tgi_batch_inference_failure", method=method)
            await self._fail(batch_ids, ids, e.details)
            return None
        self._record_step(method, result, start, filter_start, batch)
        return batch

    async def _filter(self, batch: CachedBatch | None) -> CachedBatch | None:
        """Release ended and dropped requests; tell the shard to keep only the live ones."""
        if batch is None:
            return None
        live = [i for i in batch.request_ids if self._keep(i)]
        if len(live) == batch.size:
            return batch
        if not live:
            await self._client.clear_cache(batch.id)
            return None
        with tracing.span("filter_batch", id=batch.id, size=len(live)):
            return await self._client.filter_batch(batch.id, live)

    def _keep(self, request_id: int) -> bool:
        state = self._states.get(request_id)
        if state is None or not state.running or state.round_id != request_id:
            return False
        if state.dropped:
            self._end(state)
            self._metrics.inc("tgi_request_failure", err="dropped")
            return False
        return True

    async def _fail(self, batch_ids: list[int] | None, ids: Iterable[int], details: str) -> None:
        """ClearCache the batches (all of them when ``batch_ids`` is None) and fail every listed request."""
        self._health.mark_failed()
        error = InferError("generation", f"Request failed during generation: Server error: {details}")
        for request_id in list(ids):
            state = self._states.get(request_id)
            if state is not None and state.round_id == request_id:
                self._end(state)
                state.fail(error)  # NOTE: the HTTP layer counts tgi_request_failure{err="generation"}
        try:
            for batch_id in batch_ids if batch_ids is not None else [None]:
                await self._client.clear_cache(batch_id)
        except ShardError as e:
            log.error("ClearCache after a failed batch failed too: %s", e)
        self._record_cache_stats()

    # ---- generations -----------------------------------------------------------------------------------

    def _dispatch(self, generations: Iterable[Generation]) -> None:
        for gen in generations:
            state = self._states.get(gen.request_id)
            if state is None or state.dropped or not state.running or state.round_id != gen.request_id:
                continue
            if gen.error is not None:
                # Only this request failed (the shard dropped it from the batch); the others go on.
                self._end(state)
                message = f"Request failed during generation: Server error: {gen.error}"
                state.fail(InferError("generation", message))
                continue
            self._send(state, gen)

    def _send(self, state: RequestState, gen: Generation) -> None:
        if state.prompt_done_round != gen.request_id:
            # First generation of this round: the whole prompt's KV is in the pool, so its full blocks can
            # be shared with waiting requests now rather than when this request finishes.
            state.prompt_done_round = gen.request_id
            self._scheduler.prefill_done(gen.request_id)
        if gen.prefill_tokens and not state.prefill_sent and state.request.decoder_input_details:
            state.emit(PrefillTokens(list(gen.prefill_tokens)))
        state.prefill_sent = True
        last = len(gen.tokens) - 1
        for i, token in enumerate(gen.tokens):
            top = list(gen.top_tokens[i]) if i < len(gen.top_tokens) else []
            if i == last and gen.generated_text is not None:
                self._round_end(state, gen, TokenEvent(token=token, top_tokens=top))
            else:
                state.emit(TokenEvent(token=token, top_tokens=top))

    def _round_end(self, state: RequestState, gen: Generation, last: TokenEvent) -> None:
        """The shard finished this round: continue past the 1,024 cap, or deliver the EndEvent."""
        done = gen.generated_text
        assert done is not None
        self._end(state)
        text = state.text_before + done.text
        tokens = state.tokens_before + done.generated_tokens
        if done.finish_reason == "length" and self._continue(state, text, tokens):
            state.emit(last)
            return
        state.ended = True
        state.emit(EndEvent(
            token=last.token, top_tokens=last.top_tokens, generated_text=text, generated_tokens=tokens,
            finish_reason=done.finish_reason, seed=done.seed, queued_at=state.queued_at,
            started_at=state.started_at,
        ))

    def _continue(self, state: RequestState, text: str, tokens: int) -> bool:
        """Re-enqueue ``inputs + text`` for the next round when the client wants more and it still fits."""
        if tokens < state.tokens_before + state.round_max_new or tokens >= state.request.stopping.max_new_tokens:
            return False
        req = state.request
        inputs = req.inputs + text
        ids = self._encode(inputs, req.add_special_tokens)
        wanted = min(req.stopping.max_new_tokens - tokens, DEFAULT_GENERATION_LENGTH)
        if len(ids) > self.info.max_input_tokens or len(ids) + wanted > self.info.max_total_tokens:
            return False
        state.text_before, state.tokens_before = text, tokens
        self._submit(state, inputs, ids)
        return True

    def _end(self, state: RequestState) -> None:
        """The current round left its batch: release its blocks and forget its id."""
        self._states.pop(state.round_id, None)
        state.running = False
        self._scheduler.release(state.round_id)

    # ---- batches ---------------------------------------------------------------------------------------

    def _shard_batch(self, plan: BatchPlan) -> ShardBatch:
        batch_id, self._next_batch_id = self._next_batch_id, self._next_batch_id + 1
        now = self._clock()
        requests = []
        for adm in plan.admissions:
            state = self._states[adm.request.id]
            state.running = True
            state.started_at = state.started_at or now
            requests.append(self._shard_request(state, adm))
        return ShardBatch(id=batch_id, requests=tuple(requests), max_tokens=plan.max_tokens,
                          max_blocks=plan.max_blocks)

    def _shard_request(self, state: RequestState, adm: Admission) -> ShardRequest:
        req = state.request
        continuing = state.tokens_before > 0
        return ShardRequest(
            id=state.round_id,
            inputs=state.round_inputs,
            truncate=adm.request.input_length if continuing else req.truncate,
            sampling=req.sampling,
            max_new_tokens=state.round_max_new,
            stop_sequences=req.stopping.stop_sequences,
            ignore_eos_token=req.stopping.ignore_eos_token,
            prefill_logprobs=req.decoder_input_details and not continuing,
            top_n_tokens=req.top_n_tokens,
            blocks=adm.blocks,
            slots=adm.slots,
            adapter_id=req.adapter_id,
            cache_len=adm.cache_len,
            add_special_tokens=req.add_special_tokens,
            chunk_len=adm.chunk_len,
        )

    # ---- metrics ---------------------------------------------------------------------------------------

    def _record_step(
        self, method: str, result: StepResult, start: float, filter_start: float, batch: CachedBatch | None
    ) -> None:
        m, now = self._metrics, self._clock()
        m.inc("tgi_batch_inference_success", method=method)
        m.observe("tgi_batch_inference_duration", now - start, method=method)
        m.observe("tgi_batch_forward_duration", result.forward_ns / 1e9, method=method)
        m.observe("tgi_batch_decode_duration", result.decode_ns / 1e9, method=method)
        m.observe("tgi_batch_filter_duration", now - filter_start, method=method)
        if result.concat_ns is not None:
            m.observe("tgi_batch_concat_duration", result.concat_ns / 1e9, method="decode")
        m.set("tgi_batch_current_size", batch.size if batch is not None else 0)
        m.set("tgi_batch_current_max_tokens", batch.max_tokens if batch is not None else 0)
        self._record_cache_stats()

    def _set_idle(self) -> None:
        self._metrics.set("tgi_batch_current_size", 0)
        self._metrics.set("tgi_batch_current_max_tokens", 0)
        self._metrics.set("tgi_queue_size", self._scheduler.waiting_count())
        self._record_cache_stats()

    def _record_cache_stats(self) -> None:
        """Prefix-cache metrics from the scheduler (counters advance by the change since the last call)."""
        stats = self._scheduler.cache_stats()
        for metric, key in (
            ("prism_prefix_cache_queried_tokens", "prompt_tokens_queried"),
            ("prism_prefix_cache_hit_tokens", "prompt_tokens_hit"),
            ("prism_prefix_cache_evictions", "evictions"),
        ):
            value = stats.get(key, 0)
            self._metrics.inc(metric, value - self._cache_seen.get(key, 0))
            self._cache_seen[key] = value
        for state in ("free", "cached", "in_use"):
            self._metrics.set("prism_prefix_cache_blocks", stats.get(f"blocks_{state}", 0), state=state)
