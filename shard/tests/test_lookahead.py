"""The decode step run ahead (shard.lookahead) changes nothing a router sees: under seeded random churn (new
requests merged in or prefilled alone and concatenated, chunked prompts, greedy and seeded sampling, finishes
filtered out, requests dropped mid-stream, blocks freed and handed to the next requests at once) a shard
running ahead answers every RPC as one that does not, and no step runs ahead on a batch once
FilterBatch/ClearCache answered."""

from __future__ import annotations

import random

import pytest

from proto.generate.v3 import generate_pb2 as pb
from shard.factory import build_runner
from shard.server import TextGenerationService
from shard.tests.helpers import BLOCK, batch, make_config, request, slots_of

WORDS = "the a bee kept train coast river stone light green under over quietly sings".split()
POOL_BLOCKS = 40  # small, so freed blocks are reused by the next requests within a few steps


class Router:
    """Drives two shards with the same RPCs, compares their answers and hands out blocks as the router does
    (a request's blocks go back to the free list once FilterBatch/ClearCache dropped it)."""

    def __init__(self, ahead: TextGenerationService, plain: TextGenerationService, seed: int) -> None:
        self.shards, self.rng = (ahead, plain), random.Random(seed)
        self.free = list(range(1, POOL_BLOCKS))
        self.held: dict[int, list[int]] = {}
        self.next_id, self.next_batch = 0, 100
        self.tokens: dict[int, list[int]] = {}

    async def call(self, method: str, message):
        answers = [await getattr(s, method)(message, None) for s in self.shards]
        self._compare(answers[0], answers[1])
        return answers[0]

    def _compare(self, a, b) -> None:
        if hasattr(a, "generations"):
            def view(resp):
                return [(g.request_id, list(g.tokens.ids), g.HasField("generated_text"),
                         g.generated_text.finish_reason, g.error) for g in resp.generations]
            assert view(a) == view(b)
            for ga, gb in zip(a.generations, b.generations):
                assert list(ga.tokens.logprobs) == pytest.approx(list(gb.tokens.logprobs), abs=1e-4)
                self.tokens.setdefault(ga.request_id, []).extend(ga.tokens.ids)
        if not hasattr(a, "batch"):
            return
        assert a.HasField("batch") == b.HasField("batch")
        if a.HasField("batch"):
            fields = ("id", "request_ids", "size", "max_tokens", "current_tokens")
            assert [getattr(a.batch, f) for f in fields] == [getattr(b.batch, f) for f in fields]

    def new_requests(self, count: int) -> list[pb.Request]:
        out = []
        for _ in range(count):
            max_new = self.rng.randrange(1, 14)
            need = -(-(48 + max_new) // BLOCK)
            if len(self.free) < need:
                break
            blocks = [self.free.pop(0) for _ in range(need)]
            rid, self.next_id = self.next_id, self.next_id + 1
            self.held[rid] = blocks
            text = " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randrange(3, 30)))
            extra: dict = {"chunk_len": self.rng.randrange(2, 8)} if self.rng.random() < 0.15 else {}
            if self.rng.random() < 0.3:  # seeded sampling: each request draws from its own generator
                extra["parameters"] = pb.NextTokenChooserParameters(
                    temperature=0.8, top_k=20, top_p=1.0, typical_p=1.0, repetition_penalty=1.1,
                    do_sample=True, seed=rid)
            out.append(request(rid, text, blocks, slots_of(blocks, len(blocks) * BLOCK), max_new=max_new,
                               **extra))
        return out

    def new_batch(self, count: int) -> pb.Batch | None:
        reqs = self.new_requests(count)
        if not reqs:
            return None
        self.next_batch += 1
        return batch(self.next_batch, reqs)

    def release(self, ids) -> None:
        for rid in ids:
            self.free += self.held.pop(rid)

    async def settle_batch(self, resp) -> pb.CachedBatch | None:
        """Filter out the finished requests and, at random, one live request whose client left."""
        if not resp.HasField("batch"):
            self.release([g.request_id for g in resp.generations if g.request_id in self.held])
            return None
        cached = resp.batch
        done = {g.request_id for g in resp.generations if g.HasField("generated_text") or g.error}
        live = [i for i in cached.request_ids if i not in done]
        if live and self.rng.random() < 0.08:
            done.add(live.pop(self.rng.randrange(len(live))))
        if len(live) == len(cached.request_ids):
            return cached
        if not live:
            await self.call("ClearCache", pb.ClearCacheRequest(id=cached.id))
            cached = None
        else:
            cached = (await self.call("FilterBatch", pb.FilterBatchRequest(batch_id=cached.id,
                                                                            request_ids=live))).batch
        for s in self.shards:  # its writes are done: the router may hand the dropped blocks out now
            assert s.lookahead._task is None
        self.release(i for i in done if i in self.held)
        return cached


async def _churn(tiny_llama, seed: int, steps: int) -> tuple[Router, TextGenerationService]:
    config = make_config(tiny_llama, num_blocks=POOL_BLOCKS)
    ahead, plain = (TextGenerationService(build_runner(config), config) for _ in range(2))
    plain.lookahead.enabled = False
    router = Router(ahead, plain, seed)
    cached = None
    for _ in range(steps):
        roll = router.rng.random()
        if cached is None:
            new = router.new_batch(router.rng.randrange(1, 4))
            resp = await router.call("Prefill", pb.PrefillRequest(batch=new)) if new else None
        elif roll < 0.2 and (new := router.new_batch(router.rng.randrange(1, 3))):
            resp = await router.call("Prefill", pb.PrefillRequest(batch=new, cached_batch=cached))
        elif roll < 0.3 and (new := router.new_batch(1)):
            # a non-chunking router: prefill alone, the next Decode concatenates the two batches
            alone = await router.call("Prefill", pb.PrefillRequest(batch=new))
            if not alone.HasField("batch"):
                await router.settle_batch(alone)  # it stopped at its first token
                continue
            resp = await router.call("Decode", pb.DecodeRequest(batches=[cached, alone.batch]))
        else:
            resp = await router.call("Decode", pb.DecodeRequest(batches=[cached]))
        cached = await router.settle_batch(resp) if resp is not None else None
    return router, ahead


async def test_running_ahead_answers_every_rpc_as_a_plain_shard(tiny_llama) -> None:
    router, ahead = await _churn(tiny_llama, seed=10, steps=160)
    assert ahead.lookahead.started > 40  # it did run ahead, and through every kind of RPC above
    assert sum(len(t) for t in router.tokens.values()) > 300 and router.next_id > 30


async def test_a_failed_step_run_ahead_fails_the_next_rpc_on_its_batch(tiny_llama) -> None:
    config = make_config(tiny_llama, num_blocks=POOL_BLOCKS)
    service = TextGenerationService(build_runner(config), config)
    blocks = list(range(1, 5))
    first = await service.Prefill(pb.PrefillRequest(batch=batch(1, [
        request(0, "a bee kept", blocks, slots_of(blocks, 64), max_new=8)])), None)
    assert service.lookahead.started == 1
    await service.lookahead.settle()

    def broken(requests):
        raise RuntimeError("device lost")

    service.runner.step = broken  # the next step run ahead fails
    second = await service.Decode(pb.DecodeRequest(batches=[first.batch]), None)
    assert len(second.generations) == 1 and service.lookahead.started == 2
    with pytest.raises(RuntimeError, match="device lost"):
        await service.Decode(pb.DecodeRequest(batches=[second.batch]), None)
    await service.ClearCache(pb.ClearCacheRequest(), None)
    assert not service.batches and service.lookahead.take(1) is None
