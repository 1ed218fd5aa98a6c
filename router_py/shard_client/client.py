"""gRPC client to the model shards (generate.v3 over Unix sockets), fanned out to every shard.

The only router module that imports the generated stubs: every method takes and returns the plain data of
:mod:`router_py.shard_client.messages`. As TGI's sharded client: each call goes to all shards (the
tensor-parallel ranks of one model) in parallel, and every rank runs every step; Prefill and Decode take
the generations and the batch of rank 0 (every rank samples the same tokens) and report the slowest rank's
timings; Warmup takes the minimum over shards; Info, Health and FilterBatch use the last shard's answer. Every
RPC carries the current trace context as metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc

from prism_cache.tiers.types import BlockCopy
from proto.generate.v3 import generate_pb2 as pb
from proto.generate.v3 import generate_pb2_grpc as pb_grpc
from router_py.backend_api import Token
from router_py.shard_client.messages import (
    CachedBatch,
    GeneratedText,
    Generation,
    RequestBatch,
    ShardInfo,
    ShardRequest,
    StepResult,
    WarmupResult,
)
from router_py.tracing import inject_grpc_metadata

T = TypeVar("T")

UNIX_PREFIX = "unix://"
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.max_send_message_length", 2**31 - 1),
    # NOTE: a restarted shard is reached within ~0.5 s (gRPC's default backoff grows to 120 s), and an idle
    # channel never drops its connection by itself, so a connection loss always means the shard went away.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.client_idle_timeout_ms", 2**31 - 1),
]
_FINISH_REASONS = {
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_EOS_TOKEN: "eos_token",
    pb.FINISH_REASON_STOP_SEQUENCE: "stop_sequence",
}


class ShardError(Exception):
    """An RPC failed; ``details`` is the shard's message (its Python exception text), ``code`` the gRPC status
    name (``"UNAVAILABLE"`` when the shard cannot be reached; ``""`` when not from gRPC)."""

    def __init__(self, rpc: str, details: str, code: str = "") -> None:
        super().__init__(f"{rpc}: {details}")
        self.rpc = rpc
        self.details = details
        self.code = code


class ShardClient:
    """One stub per shard. Build with :meth:`connect`; :meth:`close` releases the channels."""

    def __init__(self, channels: Sequence[grpc.aio.Channel]) -> None:
        self._channels = list(channels)
        self._stubs = [pb_grpc.TextGenerationServiceStub(c) for c in self._channels]
        self._tier_stubs = [pb_grpc.KvTierServiceStub(c) for c in self._channels]
        self._step_lock = asyncio.Lock()  # see _one_step_at_a_time

    @classmethod
    async def connect(cls, master_uds_path: str) -> ShardClient:
        """Connect to the master shard's socket (a path, with or without ``unix://``), discover every
        shard with ServiceDiscovery and connect to each. Raises ShardError when discovery fails."""
        master = cls([_channel(master_uds_path)])
        request = pb.ServiceDiscoveryRequest()
        try:
            answers = await master._call("ServiceDiscovery", lambda s, md: s.ServiceDiscovery(request, metadata=md))
        finally:
            await master.close()
        paths = [u.removeprefix(UNIX_PREFIX) for u in answers[-1].urls]
        if not paths:
            raise ShardError("ServiceDiscovery", "the shard reported no shard URLs")
        return cls([_channel(p) for p in paths])

    @property
    def num_shards(self) -> int:
        return len(self._stubs)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._channels))

    async def wait_disconnected(self) -> None:
        """Return once a shard connection that was up goes down (the shard process exited or closed its
        socket). Call after a successful RPC: a channel that never connected is not watched until it does."""
        watchers = [asyncio.ensure_future(_wait_left_ready(c)) for c in self._channels]
        try:
            await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in watchers:
                w.cancel()

    # ---- RPCs ------------------------------------------------------------------------------------------

    async def info(self) -> ShardInfo:
        r = (await self._call("Info", lambda s, md: s.Info(pb.InfoRequest(), metadata=md)))[-1]
        return ShardInfo(
            requires_padding=r.requires_padding,
            dtype=r.dtype,
            device_type=r.device_type,
            window_size=r.window_size if r.HasField("window_size") else None,
            speculate=r.speculate,
            support_chunking=r.support_chunking,
            use_prefix_caching=r.use_prefix_caching,
            attention_impl=r.attention_impl,
            block_size=r.block_size,
            kv_capacity_tokens=r.kv_capacity_tokens,
        )

    async def health(self) -> None:
        """Raises ShardError when any shard is unhealthy."""
        await self._call("Health", lambda s, md: s.Health(pb.HealthRequest(), metadata=md))

    async def clear_cache(self, batch_id: int | None = None) -> None:
        """Drop one cached batch, or every batch when ``batch_id`` is None."""
        req = pb.ClearCacheRequest() if batch_id is None else pb.ClearCacheRequest(id=batch_id)
        await self._call("ClearCache", lambda s, md: s.ClearCache(req, metadata=md))

    async def filter_batch(self, batch_id: int, keep_ids: Sequence[int]) -> CachedBatch:
        req = pb.FilterBatchRequest(batch_id=batch_id, request_ids=list(keep_ids))
        r = (await self._call("FilterBatch", lambda s, md: s.FilterBatch(req, metadata=md)))[-1]
        return _cached_from_pb(r.batch)

    async def warmup(
        self,
        batch: RequestBatch,
        max_input_tokens: int | None,
        max_prefill_tokens: int,
        max_total_tokens: int | None,
    ) -> WarmupResult:
        """Run the warmup batch; returns the lexicographic minimum of the shards' answers."""
        req = pb.WarmupRequest(batch=_batch_to_pb(batch), max_prefill_tokens=max_prefill_tokens)
        if max_input_tokens is not None:
            req.max_input_tokens = max_input_tokens
        if max_total_tokens is not None:
            req.max_total_tokens = max_total_tokens
        async with self._one_step_at_a_time():
            answers = await self._call("Warmup", lambda s, md: s.Warmup(req, metadata=md))
        results = [
            WarmupResult(
                max_supported_total_tokens=(
                    r.max_supported_total_tokens if r.HasField("max_supported_total_tokens") else None
                ),
                max_input_tokens=r.max_input_tokens,
                max_total_tokens=r.max_total_tokens,
                kv_host_blocks=r.kv_host_blocks,
                kv_disk_blocks=r.kv_disk_blocks,
                kv_block_bytes=r.kv_block_bytes,
            )
            for r in answers
        ]
        return min(results, key=_warmup_key)

    async def prefill(
        self, batch: RequestBatch, cached: CachedBatch | None = None, copies: Sequence[BlockCopy] = ()
    ) -> StepResult:
        """Prefill a new batch; with ``cached`` (chunking shards) the shard merges it after ``cached``.
        ``copies``: KV block copies between tiers the shard runs first, in order (docs/kv-tiers-wire.md)."""
        req = pb.PrefillRequest(batch=_batch_to_pb(batch), kv_copies=_copies_to_pb(copies))
        if cached is not None:
            req.cached_batch.CopyFrom(_cached_to_pb(cached))
        async with self._one_step_at_a_time():
            answers = await self._call("Prefill", lambda s, md: s.Prefill(req, metadata=md))
        return _merge_steps(answers)

    async def decode(self, batches: Sequence[CachedBatch], copies: Sequence[BlockCopy] = ()) -> StepResult:
        """One decode step over one or more cached batches (the shard concatenates them)."""
        req = pb.DecodeRequest(batches=[_cached_to_pb(b) for b in batches], kv_copies=_copies_to_pb(copies))
        async with self._one_step_at_a_time():
            answers = await self._call("Decode", lambda s, md: s.Decode(req, metadata=md))
        return _merge_steps(answers)

    async def transfer(self, copies: Sequence[BlockCopy]) -> tuple[int, ...]:
        """KvTierService.Transfer on every shard (prefetch while requests wait); the indices of ``copies``
        that failed on any shard."""
        req = pb.KvTransferRequest(copies=_copies_to_pb(copies))
        answers = await self._call("Transfer", lambda s, md: s.Transfer(req, metadata=md), self._tier_stubs)
        return tuple(sorted({i for r in answers for i in r.failed}))

    # ---- fan-out ---------------------------------------------------------------------------------------

    def _one_step_at_a_time(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Model steps (Warmup, Prefill, Decode) go to tensor-parallel ranks one at a time, each after the
        previous one answered on every rank. The ranks pair their collectives by call order, so two steps in
        flight at once (the batching loop's Decode and /health's Prefill probe after a generation failure)
        could run in one order on one rank and in the other on another: the all-reduces then mixed the two
        batches' activations and the ranks returned wrong tokens, with no error. One shard needs no lock."""
        return self._step_lock if len(self._stubs) > 1 else contextlib.nullcontext()

    async def _call(
        self,
        rpc: str,
        fn: Callable[[Any, list[tuple[str, str]]], Awaitable[T]],
        stubs: Sequence[Any] | None = None,
    ) -> list[T]:
        """Call ``fn`` on every shard's stub (``stubs``: another service's, default TextGenerationService's) in
        parallel; any failure raises ShardError with its details."""
        metadata = inject_grpc_metadata()
        stubs = self._stubs if stubs is None else stubs
        try:
            if len(stubs) == 1:  # one shard: the call itself, without gather's task (one per decode step)
                return [await fn(stubs[0], metadata)]
            return list(await asyncio.gather(*(fn(stub, metadata) for stub in stubs)))
        except grpc.aio.AioRpcError as e:
            raise ShardError(rpc, e.details() or str(e.code()), e.code().name) from e


async def _wait_left_ready(channel: grpc.aio.Channel) -> None:
    was_ready = False
    while True:
        state = channel.get_state()
        if state == grpc.ChannelConnectivity.READY:
            was_ready = True
        elif was_ready:
            return
        await channel.wait_for_state_change(state)


def _channel(path: str) -> grpc.aio.Channel:
    target = path if path.startswith(UNIX_PREFIX) else UNIX_PREFIX + path
    return grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)


def _warmup_key(r: WarmupResult) -> tuple[int, int, int]:
    # NOTE: as Rust's Option ordering, an unset max_supported_total_tokens sorts before any value.
    supported = r.max_supported_total_tokens
    return (-1 if supported is None else supported, r.max_input_tokens, r.max_total_tokens)


# ---- plain data -> protobuf ----------------------------------------------------------------------------


def _request_to_pb(r: ShardRequest) -> pb.Request:
    s = r.sampling
    msg = pb.Request(
        id=r.id,
        input_chunks=pb.Input(chunks=[pb.InputChunk(text=r.inputs)]),
        inputs=r.inputs,
        truncate=r.truncate,
        parameters=pb.NextTokenChooserParameters(
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            typical_p=s.typical_p,
            do_sample=s.do_sample,
            seed=s.seed,
            repetition_penalty=s.repetition_penalty,
            frequency_penalty=s.frequency_penalty,
            watermark=s.watermark,
            grammar=s.grammar,
            grammar_type=s.grammar_type,  # type: ignore[arg-type]
            min_p=s.min_p,
            logit_bias=dict(s.logit_bias),
        ),
        stopping_parameters=pb.StoppingCriteriaParameters(
            max_new_tokens=r.max_new_tokens,
            stop_sequences=list(r.stop_sequences),
            ignore_eos_token=r.ignore_eos_token,
            min_tokens=r.min_tokens,
            stop_token_ids=list(r.stop_token_ids),
        ),
        prefill_logprobs=r.prefill_logprobs,
        top_n_tokens=r.top_n_tokens,
        blocks=list(r.blocks),
        slots=list(r.slots),
        cache_len=r.cache_len,
        add_special_tokens=r.add_special_tokens,
        input_ids=list(r.input_ids),
    )
    if r.adapter_id is not None:
        msg.adapter_id = r.adapter_id
    if r.chunk_len is not None:
        msg.chunk_len = r.chunk_len
    return msg


def _copies_to_pb(copies: Sequence[BlockCopy]) -> list[pb.KvCopy]:
    return [
        pb.KvCopy(src_tier=int(c.src_tier), src_slot=c.src_slot, dst_tier=int(c.dst_tier), dst_slot=c.dst_slot,
                  block_hash=c.block_hash)
        for c in copies
    ]


def _batch_to_pb(b: RequestBatch) -> pb.Batch:
    return pb.Batch(
        id=b.id,
        requests=[_request_to_pb(r) for r in b.requests],
        size=len(b.requests),
        max_tokens=b.max_tokens,
        max_blocks=b.max_blocks,
    )


def _cached_to_pb(b: CachedBatch) -> pb.CachedBatch:
    return pb.CachedBatch(
        id=b.id,
        request_ids=list(b.request_ids),
        size=b.size,
        max_tokens=b.max_tokens,
        current_tokens=b.current_tokens,
    )


# ---- protobuf -> plain data ----------------------------------------------------------------------------


def _cached_from_pb(b: pb.CachedBatch) -> CachedBatch:
    return CachedBatch(
        id=b.id, request_ids=tuple(b.request_ids), max_tokens=b.max_tokens, current_tokens=b.current_tokens,
        prompt_computed=tuple(b.prompt_computed),
    )


def _tokens_from_pb(t: pb.Tokens) -> tuple[Token, ...]:
    ids, logprobs, texts, special = t.ids, t.logprobs, t.texts, t.is_special
    if len(ids) == 1 and len(logprobs) == 1 and len(texts) == 1:  # NOTE: a decode step's (per token)
        lp = logprobs[0]
        return (Token(ids[0], texts[0], None if math.isnan(lp) else lp, special[0] if special else False),)
    flags = list(special) or [False] * len(ids)
    return tuple(
        Token(id=i, text=text, logprob=None if math.isnan(lp) else lp, special=sp)
        for i, lp, text, sp in zip(ids, logprobs, texts, flags)
    )


def _generation_from_pb(g: pb.Generation) -> Generation:
    text = None
    if g.HasField("generated_text"):
        gt = g.generated_text
        text = GeneratedText(
            text=gt.text,
            generated_tokens=gt.generated_tokens,
            finish_reason=_FINISH_REASONS.get(gt.finish_reason, "length"),
            seed=gt.seed if gt.HasField("seed") else None,
        )
    return Generation(
        request_id=g.request_id,
        tokens=_tokens_from_pb(g.tokens),
        prefill_tokens=_tokens_from_pb(g.prefill_tokens) if g.HasField("prefill_tokens") else (),
        generated_text=text,
        top_tokens=tuple(map(_tokens_from_pb, g.top_tokens)) if len(g.top_tokens) else (),
        error=g.error if g.HasField("error") else None,
        prefill_top_tokens=tuple(map(_tokens_from_pb, g.prefill_top_tokens)),
        prefill_ranks=tuple(g.prefill_ranks),
    )


def _merge_steps(answers: Sequence[pb.PrefillResponse | pb.DecodeResponse]) -> StepResult:
    """Rank 0's generations and batch (tensor-parallel ranks agree on both), the slowest rank's timings."""
    slowest = max(answers, key=lambda r: r.total_ns)
    first = answers[0]
    return StepResult(
        generations=tuple(_generation_from_pb(g) for g in first.generations),
        batch=_cached_from_pb(first.batch) if first.HasField("batch") else None,
        forward_ns=slowest.forward_ns,
        decode_ns=slowest.decode_ns,
        total_ns=slowest.total_ns,
        concat_ns=slowest.concat_ns if slowest.HasField("concat_ns") else None,
        kv_failed=tuple(sorted({i for r in answers for i in r.kv_failed})),
    )
