"""A fake generate.v3 shard: a real grpc.aio server on a Unix socket with trivial, deterministic compute.

Used by the batcher and shard-client tests and by ``bench/router_overhead.py``. It follows the protocol
semantics the router relies on (tgi-compat.md 1.5): batches are kept until FilterBatch/ClearCache or until all
their requests stopped, finished requests keep producing tokens until filtered, Decode concatenates batches
keeping the first id, Prefill with ``cached_batch`` merges, a chunked prompt emits no Generation until consumed
(and CachedBatch counts its computed prompt words, unless ``prompt_computed`` is off). "Tokens" are whitespace
words; token ``k`` of a request is ``(seed_of(prompt) + 7k) % 50 + 10`` with text `` w<id>``. Every Request
received is recorded in ``received`` so tests can check blocks, slots, cache_len and chunk_len.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc

from proto.generate.v3 import generate_pb2 as pb
from proto.generate.v3 import generate_pb2_grpc as pb_grpc


@dataclass
class FakeOptions:
    requires_padding: bool = False
    support_chunking: bool = True
    use_prefix_caching: bool = True
    block_size: int = 16
    num_blocks: int = 256
    step_delay_s: float = 0.0
    eos_token_id: int | None = None  # a generated token with this id finishes with eos_token
    poison_word: str | None = None  # a request whose prompt holds it fails alone (Generation.error)
    prompt_computed: bool = True  # CachedBatch says each request's computed prompt tokens (TGI's shard: no)


@dataclass
class _Req:
    pb: pb.Request
    prompt: int  # prompt words
    prompt_left: int  # prompt words the step after the first prefill computes (chunked prefill)
    computed: int  # prompt words with KV (the first prefill's until the step that computes the rest)
    generated: list[int] = field(default_factory=list)
    text: str = ""
    finished: bool = False


def _seed_of(text: str) -> int:
    return sum(text.encode()) % 997


def _token(req: _Req) -> int:
    return (_seed_of(req.pb.input_chunks.chunks[0].text) + 7 * len(req.generated)) % 50 + 10


class FakeShard(pb_grpc.TextGenerationServiceServicer):
    """One rank of a fake shard group; as a tensor-parallel rank it steps and emits every request (the router
    must take rank 0's generations only)."""

    def __init__(self, urls: list[str], rank: int, options: FakeOptions) -> None:
        self.urls, self.rank, self.options = urls, rank, options
        self.batches: dict[int, list[_Req]] = {}
        self.received: list[pb.Request] = []
        self.calls: list[str] = []
        self.warmups: list[pb.WarmupRequest] = []
        self.metadata: list[dict[str, str]] = []  # invocation metadata of every call
        self.metadata_items: list[list[tuple[str, str]]] = []  # the same, repeated keys kept
        self.fail_next: set[str] = set()  # RPC names that fail once with INTERNAL

    async def _enter(self, name: str, context: grpc.aio.ServicerContext) -> None:
        self.calls.append(name)
        self.metadata.append({k: v for k, v in context.invocation_metadata() or ()})
        self.metadata_items.append([(k, v) for k, v in context.invocation_metadata() or ()])
        if name in self.fail_next:
            self.fail_next.discard(name)
            await context.abort(grpc.StatusCode.INTERNAL, f"injected {name} failure")

    async def ServiceDiscovery(self, request, context):  # noqa: N802 (gRPC method names)
        await self._enter("ServiceDiscovery", context)
        return pb.ServiceDiscoveryResponse(urls=self.urls)

    async def Info(self, request, context):  # noqa: N802
        await self._enter("Info", context)
        o = self.options
        return pb.InfoResponse(
            requires_padding=o.requires_padding, dtype="torch.float32", device_type="cpu", speculate=0,
            support_chunking=o.support_chunking, use_prefix_caching=o.use_prefix_caching,
            attention_impl="paged", block_size=o.block_size,
            kv_capacity_tokens=0 if o.requires_padding else o.num_blocks * o.block_size,
        )

    async def Health(self, request, context):  # noqa: N802
        await self._enter("Health", context)
        return pb.HealthResponse()

    async def ClearCache(self, request, context):  # noqa: N802
        await self._enter("ClearCache", context)
        if request.HasField("id"):
            self.batches.pop(request.id, None)
        else:
            self.batches.clear()
        return pb.ClearCacheResponse()

    async def Warmup(self, request, context):  # noqa: N802
        await self._enter("Warmup", context)
        self.warmups.append(request)
        o = self.options
        resp = pb.WarmupResponse(
            max_input_tokens=request.max_input_tokens if request.HasField("max_input_tokens") else 1023,
            max_total_tokens=request.max_total_tokens if request.HasField("max_total_tokens") else 1024,
        )
        if not o.requires_padding:
            resp.max_supported_total_tokens = o.num_blocks * o.block_size
        return resp

    async def FilterBatch(self, request, context):  # noqa: N802
        await self._enter("FilterBatch", context)
        reqs = await self._batch(request.batch_id, context)
        keep = set(request.request_ids)
        self.batches[request.batch_id] = [r for r in reqs if r.pb.id in keep]
        return pb.FilterBatchResponse(batch=self._cached(request.batch_id))

    async def Prefill(self, request, context):  # noqa: N802
        await self._enter("Prefill", context)
        new = [self._admit(r) for r in request.batch.requests]
        old: list[_Req] = []
        batch_id = request.batch.id
        if request.HasField("cached_batch") and self.options.support_chunking:
            old = await self._batch(request.cached_batch.id, context)
            del self.batches[request.cached_batch.id]
            batch_id = request.cached_batch.id
        self.batches[batch_id] = old + new
        return await self._step(batch_id, pb.PrefillResponse)

    async def Decode(self, request, context):  # noqa: N802
        await self._enter("Decode", context)
        ids = [b.id for b in request.batches]
        merged: list[_Req] = []
        for i in ids:
            merged += await self._batch(i, context)
            del self.batches[i]
        self.batches[ids[0]] = merged
        return await self._step(ids[0], pb.DecodeResponse)

    # ---- compute ---------------------------------------------------------------------------------------

    def _admit(self, r: pb.Request) -> _Req:
        self.received.append(r)
        words = len(r.input_chunks.chunks[0].text.split())
        prompt = min(words, r.truncate) if r.truncate else words
        done = r.cache_len + (r.chunk_len if r.HasField("chunk_len") else prompt - r.cache_len)
        return _Req(pb=r, prompt=prompt, prompt_left=max(prompt - done, 0), computed=min(done, prompt))

    async def _batch(self, batch_id: int, context: grpc.aio.ServicerContext) -> list[_Req]:
        if batch_id not in self.batches:
            await context.abort(grpc.StatusCode.INTERNAL, f"Batch ID {batch_id} not found in cache.")
        return self.batches[batch_id]

    async def _step(self, batch_id: int, response_type):
        if self.options.step_delay_s:
            await asyncio.sleep(self.options.step_delay_s)
        gens = []
        poison = self.options.poison_word
        for req in list(self.batches[batch_id]):
            if poison is not None and poison in req.pb.input_chunks.chunks[0].text.split():
                self.batches[batch_id].remove(req)  # as the shard: a request failing alone leaves its batch
                gens.append(pb.Generation(request_id=req.pb.id, error=f"poisoned by {poison!r}"))
                continue
            gen = self._advance(req)
            if gen is not None:
                gens.append(gen)
        resp = response_type(generations=gens, forward_ns=1000 + self.rank, decode_ns=10, total_ns=2000 + self.rank)
        if all(r.finished for r in self.batches[batch_id]):
            del self.batches[batch_id]  # as TGI's shard: a batch whose requests all stopped is dropped
        else:
            resp.batch.CopyFrom(self._cached(batch_id))
        return resp

    def _advance(self, req: _Req) -> pb.Generation | None:
        if req.prompt_left > 0:  # the rest of a chunked prompt: computed now, no Generation yet
            req.prompt_left = 0
            return None
        req.computed = req.prompt
        tok = _token(req)
        req.generated.append(tok)
        req.text += f" w{tok}"
        gen = pb.Generation(request_id=req.pb.id, tokens=pb.Tokens(
            ids=[tok], logprobs=[-0.5], texts=[f" w{tok}"], is_special=[False]))
        if len(req.generated) == 1 and req.pb.prefill_logprobs:
            gen.prefill_tokens.CopyFrom(pb.Tokens(ids=[1, 2], logprobs=[float("nan"), -1.0], texts=["a", "b"]))
            gen.prefill_ranks.extend([0, 1])
            if req.pb.top_n_tokens:
                gen.prefill_top_tokens.extend([pb.Tokens(), pb.Tokens(ids=[2, 3], logprobs=[-1.0, -2.0],
                                                                      texts=["b", "c"], is_special=[False, False])])
        if req.pb.top_n_tokens:
            gen.top_tokens.append(pb.Tokens(ids=[tok], logprobs=[-0.5], texts=[f" w{tok}"], is_special=[False]))
        reason = self._finish_reason(req, tok)
        if reason is not None and not req.finished:
            req.finished = True
            gt = pb.GeneratedText(text=req.text, generated_tokens=len(req.generated), finish_reason=reason)
            if req.pb.parameters.do_sample:
                gt.seed = req.pb.parameters.seed
            gen.generated_text.CopyFrom(gt)
        return gen

    def _finish_reason(self, req: _Req, tok: int) -> int | None:
        stop = req.pb.stopping_parameters
        if len(req.generated) >= stop.max_new_tokens:
            return pb.FINISH_REASON_LENGTH
        if tok == self.options.eos_token_id and not stop.ignore_eos_token:
            return pb.FINISH_REASON_EOS_TOKEN
        if any(req.text.endswith(s) for s in stop.stop_sequences):
            return pb.FINISH_REASON_STOP_SEQUENCE
        return None

    def _cached(self, batch_id: int) -> pb.CachedBatch:
        reqs = self.batches[batch_id]
        computed = [r.computed for r in reqs] if self.options.prompt_computed else []
        return pb.CachedBatch(
            id=batch_id, request_ids=[r.pb.id for r in reqs], size=len(reqs),
            max_tokens=sum(r.pb.truncate + r.pb.stopping_parameters.max_new_tokens for r in reqs),
            current_tokens=len(reqs), prompt_computed=computed,
        )


class FakeCluster:
    """``world_size`` fake shards listening on ``{uds_base}-{rank}``."""

    def __init__(self, uds_base: str, world_size: int = 1, options: FakeOptions | None = None) -> None:
        urls = [f"unix://{uds_base}-{rank}" for rank in range(world_size)]
        self.master_path = f"{uds_base}-0"
        self.shards = [FakeShard(urls, rank, options or FakeOptions()) for rank in range(world_size)]
        self._servers: list[grpc.aio.Server] = []

    async def start(self) -> FakeCluster:
        for shard in self.shards:
            server = grpc.aio.server()
            pb_grpc.add_TextGenerationServiceServicer_to_server(shard, server)
            server.add_insecure_port(shard.urls[shard.rank])
            await server.start()
            self._servers.append(server)
        return self

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop(None) for s in self._servers))
