"""TGI v3's batching loop (tgi-compat 1.5, 2.4, 2.5): the :class:`~router_py.backend_api.Backend` the HTTP
layer talks to.

The loop asks the scheduler for the next prefill batch, sends Prefill (merged into the running batch with
``cached_batch`` on chunking shards, prefilled alone and concatenated by the next Decode otherwise), then
Decode repeatedly; after each step it streams tokens to each request, drops requests that finished or whose
client went away, tells the shard with FilterBatch/ClearCache and releases ended requests to the scheduler
(which frees or caches their blocks). Every decision about what to admit, keep or evict is the scheduler's.
An RPC error fails every request of the batch (424) and makes ``/health`` probe with a real Prefill.

Shard loss (its process died: the gRPC connection dropped, or an RPC answered UNAVAILABLE): the running
requests fail with 424 at once, ``/health`` answers 503, and the loop polls the socket until a shard
(restarted by the launcher) passes the Warmup handshake again; then the scheduler is rebuilt empty (the new
shard's KV pool holds nothing, so no cached prefix may be reused) and the requests still queued are enqueued
into it in their order. Requests waiting longer than ``shard_recovery_timeout_s``, or still waiting when the
server begins to stop (:meth:`Batcher.begin_stop`), are refused clearly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import replace

from router_py import tracing
from router_py.engine.backend_config import BackendConfig
from router_py.engine.budgets import admission_budgets
from router_py.engine.health import HealthCheck
from router_py.engine.tier_link import TierLink
from router_py.backend_api import (
    DEFAULT_GENERATION_LENGTH,
    BackendInfo,
    EndEvent,
    InferError,
    InferEvent,
    PrefillTokens,
    TokenEvent,
    ValidRequest,
)
from router_py.metrics import Metrics
from router_py.engine.active_request import ActiveRequest
from router_py.scheduling.interface import Admission, BatchPlan, SchedRequest, Scheduler
from router_py.shard_client.client import ShardClient, ShardError
from router_py.shard_client.messages import CachedBatch, Generation, RequestBatch, ShardRequest, StepResult
from router_py.engine.warmup import StartupError, handshake, request_capacity

log = logging.getLogger(__name__)

RECOVERY_POLL_S = 0.25
SHARD_LOST_REFUSED = (
    "Server error: the shard is down and did not come back in time; "
    "retry later"
)

Encode = Callable[[str, bool], Sequence[int]]  # (text, add_special_tokens) -> router token ids


class Batcher:
    """Owns the scheduler and the shard batches of one router. Construct after the Warmup handshake
    (:func:`router_py.engine.warmup.handshake`), then :meth:`start` the loop inside the serving event loop.

    ``encode`` tokenizes continuation prompts (``inputs + text so far``) for the prefix cache; ``on_plan`` is
    called with every BatchPlan before its Prefill is sent (the benchmark's sim-vs-server check uses it);
    ``scheduler_factory`` builds the empty scheduler that replaces ``scheduler`` after a shard restart
    (default: the scheduler's class on its ``config``).
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
        scheduler_factory: Callable[[], Scheduler] | None = None,
    ) -> None:
        self.info = info
        if not config.max_batch_prefill_tokens_set:  # NOTE: the default, as the handshake fitted it
            config = replace(config, max_batch_prefill_tokens=info.max_batch_prefill_tokens)
        self._client, self._config, self._scheduler = client, config, scheduler
        self._metrics, self._encode, self._on_plan, self._clock = metrics, encode, on_plan, clock
        self._health = HealthCheck(client)
        # NOTE: the most ``input + max_new_tokens`` one request can ever reserve (None: padded shard)
        self._capacity = request_capacity(
            info.max_batch_total_tokens, info.block_size, info.speculate, info.requires_padding
        )
        self._states: dict[int, ActiveRequest] = {}  # by current round id
        self._next_request_id = 0
        self._next_batch_id = 0
        self._wakeup = asyncio.Event()
        self._stalled = False  # idle, requests waiting, none admissible: a bug, reported by /health
        self._task: asyncio.Task[None] | None = None
        self._cache_seen: dict[str, int] = {}
        self._scheduler_factory = scheduler_factory or (
            lambda: type(scheduler)(scheduler.config)  # type: ignore[attr-defined]
        )
        self._shard_lost = asyncio.Event()
        self._refusing = False  # the shard stayed lost past shard_recovery_timeout_s: refuse new requests
        self._stopping = False  # the server is stopping: a lost shard will not be waited for
        self._watch: asyncio.Task[None] | None = None
        self._tiers = TierLink(client, lambda: self._scheduler, metrics, info.kv_block_bytes,
                               enabled=info.kv_host_blocks + info.kv_disk_blocks > 0)
        metrics.set("tgi_batch_max_total_tokens", info.max_batch_total_tokens)
        # NOTE: TGI's count per Generation of its tokens past the first (a summary: TGI gives it no buckets)
        self._observe_skipped = metrics.observer("tgi_request_skipped_tokens")
        self._record_cache_stats()

    # ---- Backend protocol ------------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="batching-loop")
        self._watch = loop.create_task(self._watch_shard(), name="shard-watch")

    async def stop(self) -> None:
        """Cancel the loop; every request still in flight fails with a generation error."""
        for task in (self._task, self._watch):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for state in list(self._states.values()):
            state.fail(InferError("generation", "Server error: shutdown"))
        self._states.clear()

    def begin_stop(self) -> None:
        """The server has begun to stop (SIGTERM / SIGINT) and drains its streams. A lost shard will not be
        waited for any more: while it is lost, the waiting and new requests are refused at once, not after
        ``shard_recovery_timeout_s`` (the launcher stops the router when it gives up on a shard); with the
        shard up they are still served. The recovery loop refuses them at its next poll (within
        ``RECOVERY_POLL_S``), after it has failed the requests that ran on the lost shard."""
        self._stopping = True

    async def generate_stream(self, request: ValidRequest) -> AsyncIterator[InferEvent]:
        state = ActiveRequest(request=request, queued_at=self._clock())
        state.span = tracing.start_span("infer", input_length=len(request.input_ids))
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
            tracing.end_span(state.span)

    async def health(self) -> bool:
        """False when the batching loop has died or the queue is stalled (requests wait, none can be admitted
        into an idle pool); else TGI's state machine."""
        if self._task is not None and self._task.done():
            return False
        if self._stalled:
            return False
        return await self._health.check()

    def shard_lost(self) -> bool:
        """The shard connection is lost and no shard has passed the handshake since: a request sent here now
        waits for the restart (or is refused); data parallelism sends new ones to another replica."""
        return self._shard_lost.is_set()

    def peek_prefix(self, namespace: str, hashes: Sequence[int]) -> int:
        """Tokens of a prompt with these block hashes cached in this batcher's tree, touching nothing
        (``Scheduler.peek_prefix``); data parallelism ranks replicas by it."""
        return self._scheduler.peek_prefix(namespace, hashes)

    # ---- queue side ------------------------------------------------------------------------------------

    def _submit(
        self,
        state: ActiveRequest,
        inputs: str,
        input_ids: Sequence[int],
        max_new: int | None = None,
        arrival: float | None = None,
    ) -> None:
        """Enqueue the next round of ``state`` (``max_new`` new tokens at most, default what is left up to the
        1,024 cap) under a fresh request id, arrived at ``arrival`` (default now). A round that could never
        be admitted, even into an empty pool, fails at once (validation) instead of waiting at the head of
        the queue forever; while a lost shard is not coming back, new rounds are refused."""
        if self._refusing:
            state.fail(InferError("generation", SHARD_LOST_REFUSED))
            return
        round_max_new = max_new if max_new is not None else min(state.remaining, DEFAULT_GENERATION_LENGTH)
        if self._capacity is not None and len(input_ids) + round_max_new > self._capacity:
            state.fail(InferError(
                "validation", f"`inputs` tokens + `max_new_tokens` must be <= {self._capacity}. Given: "
                f"{len(input_ids)} `inputs` tokens and {round_max_new} `max_new_tokens`"
            ))
            return
        state.round_id, self._next_request_id = self._next_request_id, self._next_request_id + 1
        state.round_inputs = inputs
        state.round_generated = []
        state.round_max_new = round_max_new
        state.running = False
        self._states[state.round_id] = state
        req = state.request
        state.round_ids = tuple(input_ids)
        first_round = req.block_hashes is not None and state.round_ids == req.input_ids
        self._scheduler.enqueue(
            SchedRequest(
                id=state.round_id, prompt_ids=state.round_ids, max_new_tokens=state.round_max_new,
                arrival=self._clock() if arrival is None else arrival, namespace=req.namespace,
                use_prefix_cache=not req.decoder_input_details, session=req.session,
                block_hashes=req.block_hashes if first_round else None,
            ),
            self._clock(),
        )
        self._metrics.set("tgi_queue_size", self._scheduler.waiting_count())
        self._wakeup.set()

    def _abandon(self, state: ActiveRequest) -> None:
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
                if self._shard_lost.is_set():
                    await self._recover()
                plan = self._next_plan(None, self._config.max_batch_prefill_tokens, min_size=0)
                self._note_stall(plan)
                if plan is None:
                    self._set_idle()
                    await self._wakeup.wait()
                    self._wakeup.clear()
                    continue
                cached = await self._prefill(plan, None)
                waiting_tokens = 1
                while cached is not None and not self._shard_lost.is_set():
                    cached, waiting_tokens = await self._serve(cached, waiting_tokens)
            except Exception:  # NOTE: a bug must not kill the loop; the batch fails, the server goes on
                log.exception("batching loop error")
                running = [i for i, s in self._states.items() if s.running]
                await self._fail(None, running, "internal router error")

    def _note_stall(self, plan: BatchPlan | None) -> None:
        """Nothing runs, so the whole pool is free or evictable: a waiting request that is still not admitted
        never will be (``_submit`` refuses those, so this is a bug to report, not a state to wait in)."""
        stalled = plan is None and self._scheduler.waiting_count() > 0
        if stalled and not self._stalled:
            log.error(
                "%d requests wait but none can be admitted into the idle pool", self._scheduler.waiting_count()
            )
        self._stalled = stalled

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
        self._tiers.prefetch()
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
        budgets = admission_budgets(
            prefill_budget,
            self.info.max_batch_total_tokens,
            cached.max_tokens if cached is not None else 0,
            self._config.max_batch_size,
            cached.size if cached is not None else 0,
        )
        if budgets is None:
            return None
        plan = self._scheduler.next_batch(
            self._clock(), budgets.prefill, budgets.tokens, max_size=budgets.max_size, min_size=min_size
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
        with tracing.batch_span("prefill", self._request_spans(ids), id=batch.id, size=len(batch.requests)):
            call = self._tiers.step(lambda copies: self._client.prefill(batch, cached, copies), plan.copies)
            return await self._step("prefill", call, batch_ids, ids)

    async def _decode(self, batches: list[CachedBatch]) -> CachedBatch | None:
        ids = [i for b in batches for i in b.request_ids]
        with tracing.batch_span("decode", self._request_spans(ids), size=len(ids)):
            return await self._step("decode", self._client.decode(batches), [b.id for b in batches], ids)

    def _request_spans(self, ids: Iterable[int]) -> dict[int, object]:
        """Shard request id -> the ``infer`` span of the request it serves (tracing on only)."""
        if not tracing.enabled():
            return {}
        return {i: self._states[i].span for i in ids if i in self._states}

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
            if e.code == "UNAVAILABLE":
                self._lose_shard()
            await self._fail(batch_ids, ids, e.details)
            return None
        self._record_step(method, result, start, filter_start, batch)
        return batch

    async def _filter(self, batch: CachedBatch | None) -> CachedBatch | None:
        """Release ended and dropped requests; tell the shard to keep only the live ones."""
        if batch is None:
            return None
        progress = dict(zip(batch.request_ids, batch.prompt_computed))
        live = [i for i in batch.request_ids if self._keep(i, progress.get(i, 0))]
        if len(live) == batch.size:
            return batch
        if not live:
            await self._client.clear_cache(batch.id)
            return None
        with tracing.span("filter_batch", id=batch.id, size=len(live)):
            return await self._client.filter_batch(batch.id, live)

    def _keep(self, request_id: int, prompt_computed: int) -> bool:
        """``prompt_computed``: the shard's count of the request's prompt tokens with KV (0: not said)."""
        state = self._states.get(request_id)
        if state is None or not state.running or state.round_id != request_id:
            return False
        if state.dropped:
            self._end(state, self._prompt_computed(state), prompt_computed)
            self._metrics.inc("tgi_request_failure", err="dropped")
            return False
        return True

    @staticmethod
    def _prompt_computed(state: ActiveRequest) -> bool:
        """The round's whole prompt is in the KV pool: its first token came back. A request whose client left
        while its prompt was still being prefilled in chunks has only some chunks computed, so only those (as
        the shard counts them) may enter the prefix cache (later requests would read uncomputed KV as a hit)."""
        return state.prompt_done_round == state.round_id

    async def _fail(self, batch_ids: list[int] | None, ids: Iterable[int], details: str) -> None:
        """ClearCache the batches (all of them when ``batch_ids`` is None) and fail every listed request."""
        self._health.mark_failed()
        # NOTE: the HTTP layer adds TGI's "Request failed during generation: " prefix (once)
        error = InferError("generation", f"Server error: {details}")
        for request_id in list(ids):
            state = self._states.get(request_id)
            if state is not None and state.round_id == request_id:
                self._end(state, computed=False)
                state.fail(error)  # NOTE: the HTTP layer counts tgi_request_failure{err="generation"}
        try:
            for batch_id in batch_ids if batch_ids is not None else [None]:
                await self._client.clear_cache(batch_id)
        except ShardError as e:
            log.error("ClearCache after a failed batch failed too: %s", e)
        self._record_cache_stats()

    # ---- shard loss and recovery ---------------------------------------------------------------------------

    async def _watch_shard(self) -> None:
        """Notice a dropped shard connection even while idle (a shard restarted unseen would hold none of the
        KV the prefix cache points at)."""
        while True:
            await self._client.wait_disconnected()
            self._lose_shard()
            while self._shard_lost.is_set():
                await asyncio.sleep(0.05)

    def _lose_shard(self) -> None:
        if not self._shard_lost.is_set():
            log.error("lost the shard connection; /health is 503 until a shard is back and warmed up")
            self._health.mark_down()
            self._shard_lost.set()
            self._wakeup.set()

    async def _recover(self) -> None:
        """Fail what ran on the lost shard, wait for a shard to pass the handshake, then rebuild the scheduler
        and enqueue the waiting requests again. Refuses waiting (and new) requests once the wait has lasted
        ``shard_recovery_timeout_s`` or the server stops; keeps polling until a shard is back or the loop is
        cancelled."""
        lost_at = self._clock()
        running = [i for i, s in self._states.items() if s.running]
        if running:
            await self._fail(None, running, "the shard was lost")
        timeout = self._config.shard_recovery_timeout_s
        while not await self._try_handshake():
            if not self._refusing and (self._stopping or self._clock() - lost_at > timeout):
                late = f"the shard did not come back within {timeout:.0f} s"
                self._refuse_waiting("the server is stopping" if self._stopping else late)
            await asyncio.sleep(RECOVERY_POLL_S)
        self._rebuild_scheduler()
        self._refusing = False
        self._shard_lost.clear()
        self._health.mark_up()
        self._metrics.inc("prism_shard_recoveries")
        log.info("shard back after %.1f s; %d queued requests kept", self._clock() - lost_at,
                 self._scheduler.waiting_count())

    async def _try_handshake(self) -> bool:
        try:
            info, _ = await handshake(self._client, self._config)
        except (ShardError, StartupError) as e:
            log.debug("shard not back yet: %s", e)
            return False
        if info != self.info:
            log.error("the restarted shard settled other limits (%s, was %s); restart the router",
                      info, self.info)
            return False
        return True

    def _refuse_waiting(self, why: str) -> None:
        log.error("%s; refusing the queued and new requests", why)
        self._refusing = True
        for request_id, state in list(self._states.items()):
            self._states.pop(request_id)
            self._scheduler.cancel(request_id)
            state.fail(InferError("generation", SHARD_LOST_REFUSED))
        self._metrics.set("tgi_queue_size", self._scheduler.waiting_count())

    def _rebuild_scheduler(self) -> None:
        """A fresh scheduler (empty prefix cache, every block free); waiting requests enqueued again in their
        order, keeping their arrival times."""
        waiting = sorted(self._states.values(), key=lambda st: st.round_id)
        self._states.clear()
        self._scheduler = self._scheduler_factory()
        self._cache_seen = {}
        self._tiers.reset()
        for state in waiting:
            self._submit(
                state, state.round_inputs, state.round_ids, state.round_max_new, arrival=state.queued_at
            )
        self._record_cache_stats()

    # ---- generations -----------------------------------------------------------------------------------

    def _dispatch(self, generations: Iterable[Generation]) -> None:
        for gen in generations:
            state = self._states.get(gen.request_id)
            if state is None or not state.running or state.round_id != gen.request_id:
                continue
            if state.dropped:
                if gen.error is None:  # NOTE: a Generation comes only once the whole prompt is computed
                    state.prompt_done_round = gen.request_id
                if gen.error is not None or gen.generated_text is not None:
                    # It left the shard's batch in this step, so _filter never sees it again: release it now.
                    self._end(state, computed=gen.error is None)
                    self._metrics.inc("tgi_request_failure", err="dropped")
                continue
            if gen.error is not None:
                # Only this request failed (the shard dropped it from the batch); the others go on.
                self._end(state, computed=False)
                # NOTE: the HTTP layer adds TGI's "Request failed during generation: " prefix (once)
                state.fail(InferError("generation", f"Server error: {gen.error}"))
                continue
            self._send(state, gen)

    def _send(self, state: ActiveRequest, gen: Generation) -> None:
        if state.prompt_done_round != gen.request_id:
            # First generation of this round: the whole prompt's KV is in the pool, so its full blocks can
            # be shared with waiting requests now rather than when this request finishes.
            state.prompt_done_round = gen.request_id
            self._scheduler.prefill_done(gen.request_id)
        if gen.prefill_tokens and not state.prefill_sent and state.request.decoder_input_details:
            tops = [list(t) for t in gen.prefill_top_tokens]
            state.emit(PrefillTokens(list(gen.prefill_tokens), tops, list(gen.prefill_ranks)))
        state.prefill_sent = True
        last = len(gen.tokens) - 1
        if last >= 0:
            self._observe_skipped(last)
        for i, token in enumerate(gen.tokens):
            state.round_generated.append(token.id)
            top = list(gen.top_tokens[i]) if i < len(gen.top_tokens) else []
            if i == last and gen.generated_text is not None:
                self._round_end(state, gen, TokenEvent(token=token, top_tokens=top))
            else:
                state.emit(TokenEvent(token=token, top_tokens=top))

    def _round_end(self, state: ActiveRequest, gen: Generation, last: TokenEvent) -> None:
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

    def _continue(self, state: ActiveRequest, text: str, tokens: int) -> bool:
        """Re-enqueue ``inputs + text`` for the next round when the client wants more. Re-tokenizing the text so
        far may count more tokens than were generated (generated tokens are not always the canonical
        tokenization of their text, e.g. partial UTF-8 decoded as U+FFFD), so the round's prompt is cut from the
        left (TGI's ``truncate``) to what ``max_input_tokens`` and ``max_total_tokens`` leave; before, such
        generations ended early with ``length`` (often right at 3,072 tokens). The prompt and all the rounds'
        tokens stay within ``max_total_tokens`` (TGI's budget per request): a ``max_new_tokens`` past it ends
        with ``length`` there."""
        if tokens < state.tokens_before + state.round_max_new or tokens >= state.request.stopping.max_new_tokens:
            return False
        if state.request.sampling.grammar:  # NOTE: a new round would restart the grammar at its first token
            return False
        req = state.request
        left = self.info.max_total_tokens - req.input_length - tokens
        wanted = min(req.stopping.max_new_tokens - tokens, DEFAULT_GENERATION_LENGTH, left)
        if wanted <= 0:
            return False
        inputs = req.inputs + text
        ids = self._continuation_ids(req, inputs, text)
        keep = min(len(ids), self.info.max_input_tokens, self.info.max_total_tokens - wanted)
        if keep <= 0:
            return False
        state.text_before, state.tokens_before = text, tokens
        self._submit(state, inputs, ids[len(ids) - keep :], wanted)
        return True

    def _continuation_ids(self, req: ValidRequest, inputs: str, text: str) -> list[int]:
        """The next round's prompt ids: ``inputs`` (the prompt and ``text``, generated so far) tokenized again;
        for a prompt given as token ids (``ids_given``) those ids as they are, then ``text``'s tokens (no
        special tokens added)."""
        if req.ids_given:
            return list(req.input_ids) + list(self._encode(text, False))
        return list(self._encode(inputs, req.add_special_tokens))

    def _end(self, state: ActiveRequest, computed: bool = True, computed_prefix: int = 0) -> None:
        """The current round left its batch: release its blocks and forget its id. ``computed=False``: it
        failed in a step or left mid-prompt, so of a prompt not yet published only ``computed_prefix`` tokens
        are cached; otherwise its generated tokens are cached after the prompt (``Scheduler.release``)."""
        self._states.pop(state.round_id, None)
        state.running = False
        generated = state.round_generated if computed else ()
        try:
            self._scheduler.release(state.round_id, computed, computed_prefix, generated)
        except Exception:  # NOTE: a bug here must not leave the request's client waiting (its blocks stay held)
            log.exception("releasing request %d failed", state.round_id)

    # ---- batches ---------------------------------------------------------------------------------------

    def _shard_batch(self, plan: BatchPlan) -> RequestBatch:
        batch_id, self._next_batch_id = self._next_batch_id, self._next_batch_id + 1
        now = self._clock()
        requests = []
        for adm in plan.admissions:
            state = self._states[adm.request.id]
            state.running = True
            state.started_at = state.started_at or now
            requests.append(self._shard_request(state, adm))
        return RequestBatch(id=batch_id, requests=tuple(requests), max_tokens=plan.max_tokens,
                          max_blocks=plan.max_blocks)

    def _shard_request(self, state: ActiveRequest, adm: Admission) -> ShardRequest:
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
            min_tokens=max(req.stopping.min_tokens - state.tokens_before, 0),
            stop_token_ids=req.stopping.stop_token_ids,
            prefill_logprobs=req.decoder_input_details and not continuing,
            top_n_tokens=req.top_n_tokens,
            blocks=adm.blocks,
            slots=adm.slots,
            adapter_id=req.adapter_id,
            cache_len=adm.cache_len,
            add_special_tokens=req.add_special_tokens,
            chunk_len=adm.chunk_len,
            input_ids=tuple(adm.request.prompt_ids),  # the ids its blocks were planned for
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
        self._tiers.record(stats)
        for state in ("free", "cached", "in_use"):
            self._metrics.set("prism_prefix_cache_blocks", stats.get(f"blocks_{state}", 0), state=state)
