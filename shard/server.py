"""The ``generate.v3.TextGenerationService`` servicer (TGI semantics) and the function that serves it on a
Unix socket. Thin: pb -> domain via :mod:`shard.convert`, work in :class:`~shard.model_runner.ModelRunner`.

Batches live in ``self.batches`` (id -> ShardBatch) until FilterBatch/ClearCache; finished requests keep
generating until the router filters them (TGI). Every handler validates fully before it changes anything, so a
bad request fails alone and the stored batches stay as they were.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable

import grpc
import torch
from opentelemetry import trace

from proto.generate.v3 import generate_pb2 as pb
from proto.generate.v3 import generate_pb2_grpc as pb_grpc
from shard import convert, step_thread
from shard.batch import RequestState, ShardBatch
from shard.config import ShardConfig
from shard.errors import BatchNotFound, InvalidRequest
from shard.generation import GenerationOut
from shard.grammar import GrammarCompiler
from shard.kv_tiers.service import KvTierServicer, parse_copies, step_with_copies
from shard.kv_tiers.tiers import KvTiers
from shard.lookahead import AheadResult, Lookahead, answer_steps_from_env, depth_from_env
from shard.model_runner import ModelRunner, StepTimes
from shard.validation import check_block_ownership, check_new_request
from shard.warmup import assign_scratch_memory, clamp_warmup_prompts, settle_limits, usable_capacity

log = logging.getLogger(__name__)
# NOTE: a no-op tracer unless --otlp-endpoint installed a provider; span names follow TGI's shard.
tracer = trace.get_tracer(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TextGenerationService"].full_name
TIER_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["KvTierService"].full_name
MAX_MESSAGE = 2**31 - 1


class TextGenerationService(pb_grpc.TextGenerationServiceServicer):
    def __init__(
        self,
        runner: ModelRunner,
        config: ShardConfig,
        attention_impl: str = "paged",
        tiers: KvTiers | None = None,
    ) -> None:
        self.runner, self.config, self.attention_impl = runner, config, attention_impl
        self.tiers = tiers  # host/disk KV tiers (docs/kv-tiers-wire.md); None: off
        self.batches: dict[int, ShardBatch] = {}
        # NOTE: one model step at a time, run off the event loop so Health/Info answer during a long prefill.
        self.lock = asyncio.Lock()
        loaded = runner.loaded
        self.grammars = GrammarCompiler(loaded.tokenizer, loaded.model.config.vocab_size, loaded.eos_token_ids)
        ahead = depth_from_env() if tiers is None and config.world_size == 1 else 0
        self.lookahead = Lookahead(self._start_ahead, lambda requests: self.runner.step(requests), ahead,
                                   answer_steps_from_env())

    # ---- metadata RPCs -------------------------------------------------------------------------------------

    async def Info(self, request: pb.InfoRequest, context) -> pb.InfoResponse:
        loaded = self.runner.loaded
        return pb.InfoResponse(
            requires_padding=False,
            dtype=str(loaded.dtype),
            device_type=loaded.device.type,
            speculate=0,
            support_chunking=True,
            use_prefix_caching=self.config.prefix_caching,
            attention_impl=self.attention_impl,
            block_size=self.runner.kv.block_size,
            kv_capacity_tokens=self.runner.kv.capacity_tokens,  # NOTE: the pool is allocated at start
        )

    async def ServiceDiscovery(self, request, context) -> pb.ServiceDiscoveryResponse:
        return pb.ServiceDiscoveryResponse(urls=self.config.urls)

    async def Health(self, request, context) -> pb.HealthResponse:
        if self.runner.loaded.device.type == "cuda":
            torch.zeros((2, 2), device=self.runner.loaded.device).sum().item()
        return pb.HealthResponse()

    async def ClearCache(self, request: pb.ClearCacheRequest, context) -> pb.ClearCacheResponse:
        batch_id = request.id if request.HasField("id") else None
        await self.lookahead.settle(batch_id)  # its KV writes land before the router reuses the blocks
        self.lookahead.drop(batch_id)
        if batch_id is not None:
            self.batches.pop(batch_id, None)
        else:
            self.batches.clear()
        return pb.ClearCacheResponse()

    async def FilterBatch(self, request: pb.FilterBatchRequest, context) -> pb.FilterBatchResponse:
        await self.lookahead.settle(request.batch_id)
        batch = self._get(request.batch_id)
        try:
            with tracer.start_as_current_span("filter"):
                kept = batch.filter(list(request.request_ids))
        except KeyError as err:
            raise InvalidRequest(err.args[0]) from err
        self.lookahead.filter(batch.id, kept)
        self.runner.plan_next(kept.requests)
        self.batches[kept.id] = kept
        return pb.FilterBatchResponse(batch=self._cached(kept))

    # ---- model RPCs ----------------------------------------------------------------------------------------

    async def Warmup(self, request: pb.WarmupRequest, context) -> pb.WarmupResponse:
        kv = self.runner.kv
        limits = settle_limits(
            request.max_input_tokens if request.HasField("max_input_tokens") else None,
            request.max_total_tokens if request.HasField("max_total_tokens") else None,
            request.max_prefill_tokens,
            usable_capacity(kv.num_blocks, kv.block_size),
            self.runner.loaded.max_position_embeddings,
        )
        log.info(
            "Warmup: max_input_tokens %d, max_total_tokens %d (%s)",
            limits.max_input_tokens, limits.max_total_tokens, limits.reason,
        )
        clamp_warmup_prompts(list(request.batch.requests), limits)
        # NOTE: a Warmup starts over (a restarted router warms this shard up again): the warmup batch is
        # checked against the pool only, as on the first Warmup, not against the earlier max_input_tokens.
        self.runner.max_input_tokens = None
        batch = self._new_batch(request.batch)
        assign_scratch_memory(batch.requests, kv.num_blocks, kv.block_size)
        self._check_new(batch)
        async with self.lock:
            await step_thread.run(self.runner.step, batch.requests)
            await step_thread.run(self.runner.maybe_capture_graphs, limits.max_total_tokens)
            prefill_rows = request.max_prefill_tokens or limits.max_input_tokens
            await step_thread.run(self.runner.warm_prefill, prefill_rows)
        self.runner.max_input_tokens = limits.max_input_tokens
        self.runner.max_prefill_tokens = request.max_prefill_tokens or None
        return pb.WarmupResponse(
            max_supported_total_tokens=kv.capacity_tokens,
            max_input_tokens=limits.max_input_tokens,
            max_total_tokens=limits.max_total_tokens,
            kv_host_blocks=self.tiers.sizes[1] if self.tiers else 0,
            kv_disk_blocks=self.tiers.sizes[2] if self.tiers else 0,
            kv_block_bytes=self.tiers.block_bytes if self.tiers else 0,
        )

    async def Prefill(self, request: pb.PrefillRequest, context) -> pb.PrefillResponse:
        start = time.perf_counter_ns()
        # NOTE: off the event loop: tokenizing and compiling grammars (cached, ~1-2 ms each) do not block RPCs.
        new = await asyncio.to_thread(self._new_batch, request.batch)
        for r in new.requests:
            if not r.blocks or not r.slots:
                raise InvalidRequest(f"request {r.id}: no blocks/slots given (only Warmup may omit them)")
        self._check_new(new)
        copies = parse_copies(self.tiers, request.kv_copies)
        parts = [self._get(request.cached_batch.id)] if request.HasField("cached_batch") else []
        return await self._run(parts + [new], start, pb.PrefillResponse, copies, defer=True)

    async def Decode(self, request: pb.DecodeRequest, context) -> pb.DecodeResponse:
        start = time.perf_counter_ns()
        if not request.batches:
            raise InvalidRequest("Decode needs at least one batch")
        copies = parse_copies(self.tiers, request.kv_copies)
        return await self._run([self._get(b.id) for b in request.batches], start, pb.DecodeResponse, copies)

    # ---- helpers -------------------------------------------------------------------------------------------

    async def _run(self, parts: list[ShardBatch], start: int, response_type, copies=(), defer: bool = False):
        """Concatenate ``parts`` (first id kept), step once, store the result; a Prefill/DecodeResponse. Then,
        when the stored batch only decodes, its next step starts ahead (shard.lookahead)."""
        ids = [r.id for b in parts for r in b.requests]
        if not ids:
            raise InvalidRequest(f"batch {parts[0].id} has no requests left (ClearCache it instead)")
        if len(ids) != len(set(ids)):
            raise InvalidRequest(f"request ids repeat across the batches: {ids}")
        if len(parts) == 1 and not copies:
            # NOTE: the batch's chain of steps run ahead goes on; this takes what is ready
            ahead = [await self.lookahead.next_ready(parts[0].id, len(parts[0].requests))]
        else:
            for b in parts:
                await self.lookahead.settle(b.id)
            ahead = [self.lookahead.take(b.id) for b in parts]
        concat_start = time.perf_counter_ns()
        with tracer.start_as_current_span("concatenate"):
            batch = ShardBatch.concatenate(parts) if len(parts) > 1 else parts[0]
        concat_ns = time.perf_counter_ns() - concat_start
        generations, times, copies_failed = await self._step(parts, ahead, batch, copies, defer)
        for b in parts:
            self.batches.pop(b.id, None)
        stepped = batch
        failed = {g.request_id for g in generations if g.error is not None}
        if failed:
            # NOTE: a request that failed alone leaves the batch; the others keep their state and KV.
            # NOTE: a chain ends at a failure; this waits for its worker to return before the batch changes
            await self.lookahead.settle(batch.id)
            batch = batch.filter([i for i in batch.request_ids if i not in failed])
            self.runner.plan_next(batch.requests)
            generations_live = [g for g in generations if g.error is None]
        else:
            generations_live = generations
        cached = None
        if batch.requests and not _all_stopped(batch, generations_live):
            self.batches[batch.id] = batch
            cached = self._cached(batch, decoding=self.lookahead.running(batch.id))
            # NOTE: before the answer is built: only the GenerationOut objects are read from here on
            await self.lookahead.maybe_start(batch, generations, len(self.batches))
        out = response_type(forward_ns=times.forward_ns, decode_ns=times.decode_ns, kv_failed=copies_failed)
        convert.add_generations(out.generations, self._mine(stepped, generations))
        if len(parts) > 1:
            out.concat_ns = concat_ns
        if cached is not None:
            out.batch.CopyFrom(cached)
        out.total_ns = time.perf_counter_ns() - start
        return out

    async def _step(self, parts: list[ShardBatch], ahead: list[AheadResult | None], batch: ShardBatch,
                    copies, defer: bool) -> tuple[list[GenerationOut], StepTimes, list[int]]:
        """One step of the ``parts`` whose step did not run ahead (shard.lookahead); the results of those that
        did come first. Returns (generations, times, failed copy indices)."""
        fresh = [r for b, a in zip(parts, ahead) if a is None for r in b.requests]
        generations = [g for a in ahead if a is not None for g in a.generations]
        times = [a.times for a in ahead if a is not None]
        copies_failed: list[int] = []
        if fresh or copies:
            with tracer.start_as_current_span("generate_token"):
                self.lookahead.stop_soon()  # a chain on another batch holds the lock until it ends
                async with self.lock:
                    stepped, stepped_times, copies_failed = await step_with_copies(
                        self.runner, self.tiers, fresh, list(copies), defer
                    )
            generations += stepped
            times.append(stepped_times)
            if len(fresh) < len(batch.requests):
                self.runner.plan_next(batch.requests)
        total = StepTimes(sum(t.forward_ns for t in times), sum(t.decode_ns for t in times))
        return generations, total, copies_failed

    async def _start_ahead(self, work: Callable[[], None]) -> Awaitable[None] | None:
        """Take the step lock and hand ``work`` (shard.lookahead's chain of steps) to a worker thread now (no
        loop turn in between: the shard's step is the bottleneck); the returned awaitable ends with it and
        releases the lock. None (nothing started) while another RPC holds the lock: that one goes first."""
        if self.lock.locked():
            return None
        await self.lock.acquire()
        try:
            running = step_thread.run(work)
        except BaseException:
            self.lock.release()
            raise

        async def finish() -> None:
            try:
                await running
            finally:
                self.lock.release()

        return finish()

    def _new_batch(self, batch: pb.Batch) -> ShardBatch:
        detok, eos = self.runner.detok, self.runner.loaded.eos_token_ids
        if not batch.requests:
            raise InvalidRequest(f"batch {batch.id} has no requests")
        self.grammars.precompile([(r.parameters.grammar_type, r.parameters.grammar) for r in batch.requests
                                  if r.parameters.grammar])
        requests = [convert.request_state(r, detok, eos, self.grammars) for r in batch.requests]
        return ShardBatch(batch.id, requests)

    def _mine(self, batch: ShardBatch, generations: list[GenerationOut]) -> list[GenerationOut]:
        """The generations this rank reports: all on rank 0, none on the others. Tensor-parallel ranks sample
        the same tokens from the same gathered logits, so rank 0's are everyone's; the router takes rank 0's
        (and a router that concatenates every shard's answer, as TGI's, still gets each exactly once)."""
        return generations if self.config.rank == 0 else []

    def _check_new(self, batch: ShardBatch) -> None:
        """Every check on requests entering the shard; runs before anything is written."""
        for r in batch.requests:
            check_new_request(r, self.runner.limits)
        live = [r for b in self.batches.values() for r in b.requests]
        check_block_ownership(batch.requests, live, self.runner.kv.block_size)

    def _get(self, batch_id: int) -> ShardBatch:
        if batch_id not in self.batches:
            raise BatchNotFound(f"batch {batch_id} not found (held: {sorted(self.batches)})")
        return self.batches[batch_id]

    def _cached(self, batch: ShardBatch, decoding: bool = False) -> pb.CachedBatch:
        """``decoding``: a chain steps the batch now (shard.lookahead), so its requests' next lengths are in
        flux; each decodes one token per step (its ids and blocks stay as they are)."""
        current = len(batch.requests) if decoding else None
        return convert.cached_batch(batch, self.runner.kv.block_size, current)


def _all_stopped(batch: ShardBatch, generations: list[GenerationOut]) -> bool:
    """TGI drops a batch when every request stopped at this step (no Generation = still prefilling)."""
    stopped = {g.request_id for g in generations if g.finished is not None}
    return all(i in stopped for i in batch.request_ids)


def build_server(service: TextGenerationService, config: ShardConfig) -> grpc.aio.Server:
    """A grpc.aio server with the servicer, reflection and interceptors, bound to the shard's socket."""
    from grpc_reflection.v1alpha import reflection

    from shard.interceptor import ExceptionInterceptor

    interceptors: list = [ExceptionInterceptor()]
    if config.otlp_endpoint:
        from shard.tracing import TracingInterceptor, setup_tracing

        setup_tracing(config.otlp_endpoint, config.otlp_service_name)
        interceptors.insert(0, TracingInterceptor())
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ],
    )
    pb_grpc.add_TextGenerationServiceServicer_to_server(service, server)
    pb_grpc.add_KvTierServiceServicer_to_server(KvTierServicer(service.tiers), server)
    reflection.enable_server_reflection([SERVICE_NAME, TIER_SERVICE_NAME, reflection.SERVICE_NAME], server)
    if os.path.exists(config.socket_path):
        os.unlink(config.socket_path)  # stale socket from a previous run
    server.add_insecure_port(f"unix://{config.socket_path}")
    return server


def serving_socket(path: str) -> bool:
    """Whether a process accepts connections on the Unix socket ``path``: a live server, not a stale file.
    (The launcher has its own copy: the import rules keep the router's packages and the shard's apart.)"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


async def serve(service: TextGenerationService, config: ShardConfig) -> None:
    """Serve until cancelled or terminated."""
    server = build_server(service, config)
    await server.start()
    log.info("Server started at unix://%s", config.socket_path)
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(grace=1)
        if config.otlp_endpoint:
            from shard.tracing import shutdown_tracing

            shutdown_tracing()  # NOTE: the last spans, within a bound when the receiver is down
