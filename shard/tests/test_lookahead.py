"""The decode steps run ahead (shard.lookahead) change nothing a router sees but how many of a request's tokens
one answer carries: under seeded random churn (new requests merged in or prefilled alone and concatenated,
chunked prompts, greedy and seeded sampling, finishes filtered out, requests dropped mid-stream, blocks freed
and handed to the next requests at once) a shard running ahead answers every RPC as one that does not, after
as many Decodes of that one as the answer carries steps, and no step runs ahead on a batch once
FilterBatch/ClearCache answered."""

from __future__ import annotations

import asyncio
import random

import pytest

from proto.generate.v3 import generate_pb2 as pb
from shard.factory import build_runner
from shard.generation import FinishedText, GenerationOut, TokensOut, merge_steps
from shard.lookahead import BUSY_ROWS, AheadResult, Lookahead, answer_steps_from_env, depth_from_env
from shard.model_runner import StepTimes
from shard.sampling import FinishReason
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
        self.extra_steps = 0  # Decodes the plain shard needed to match an answer of several steps

    async def call(self, method: str, message):
        """``message`` to the shard running ahead; the same to the plain one, after as many Decodes of the
        running batch as the first answer carries extra steps of it (several tokens per request), and the
        plain answers, joined per request, compared with the first."""
        ahead, plain = self.shards
        if self.rng.random() < 0.5:
            await _chain_idle(ahead)  # so that answers often carry every step the chain may run
        a = await getattr(ahead, method)(message, None)
        running = _running_batch(message)
        answers = []
        for _ in range(_steps_of(a, running) - 1):
            answers.append(await plain.Decode(pb.DecodeRequest(batches=[running]), None))
            self.extra_steps += 1
        answers.append(await getattr(plain, method)(message, None))
        self._compare(a, answers)
        return a

    def _compare(self, a, plain: list) -> None:
        b = plain[-1]
        if hasattr(a, "generations"):
            mine, joined = _joined([a]), _joined(plain)
            assert [g.request_id for g in a.generations] == [g.request_id for g in b.generations]
            assert mine.keys() == joined.keys()
            for rid, (ids, logprobs, finish) in mine.items():
                assert (ids, finish) == (joined[rid][0], joined[rid][2])
                assert logprobs == pytest.approx(joined[rid][1], abs=1e-4)
                self.tokens.setdefault(rid, []).extend(ids)
        if not hasattr(a, "batch"):
            return
        assert a.HasField("batch") == b.HasField("batch")
        if a.HasField("batch"):
            fields = ("id", "request_ids", "size", "max_tokens", "current_tokens")
            assert [getattr(a.batch, f) for f in fields] == [getattr(b.batch, f) for f in fields]

    def prompt_tokens(self, text: str) -> int:
        return len(self.shards[0].runner.loaded.tokenizer.encode(text)) + 1  # NOTE: room for a BOS token

    def new_requests(self, count: int) -> list[pb.Request]:
        out = []
        for _ in range(count):
            max_new = self.rng.randrange(1, 14)
            text = " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randrange(3, 30)))
            need = -(-(self.prompt_tokens(text) + max_new) // BLOCK)
            if len(self.free) < need:
                break
            blocks = [self.free.pop(0) for _ in range(need)]
            rid, self.next_id = self.next_id, self.next_id + 1
            self.held[rid] = blocks
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


async def _chain_idle(service: TextGenerationService) -> None:
    while service.lookahead._task is not None:
        await asyncio.sleep(0.001)


def _running_batch(message) -> pb.CachedBatch | None:
    """The stored batch a Prefill or Decode steps (whose steps may have run ahead)."""
    if isinstance(message, pb.DecodeRequest):
        return message.batches[0]
    if isinstance(message, pb.PrefillRequest) and message.HasField("cached_batch"):
        return message.cached_batch
    return None


def _steps_of(answer, running: pb.CachedBatch | None) -> int:
    """How many steps of ``running`` one answer carries: its requests' token count."""
    if running is None or not hasattr(answer, "generations"):
        return 1
    ids = set(running.request_ids)
    return max((len(g.tokens.ids) for g in answer.generations if g.request_id in ids), default=1)


def _joined(answers: list) -> dict[int, tuple[list[int], list[float], tuple]]:
    """Per request over ``answers``: token ids, logprobs, and (finished, reason, error) of its last."""
    out: dict[int, tuple[list[int], list[float], tuple]] = {}
    for resp in answers:
        for g in resp.generations:
            ids, logprobs, _ = out.get(g.request_id, ([], [], None))
            finish = (g.HasField("generated_text"), g.generated_text.finish_reason, g.error)
            out[g.request_id] = (ids + list(g.tokens.ids), logprobs + list(g.tokens.logprobs), finish)
    return out


async def _churn(
    tiny_llama, seed: int, steps: int, busy_rows: int | None = None
) -> tuple[Router, TextGenerationService]:
    config = make_config(tiny_llama, num_blocks=POOL_BLOCKS)
    ahead, plain = (TextGenerationService(build_runner(config), config) for _ in range(2))
    plain.lookahead.depth = 0
    if busy_rows is not None:
        ahead.lookahead.busy_rows = busy_rows
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
    assert router.extra_steps > 10  # answers of several steps, each checked against the plain steps
    assert sum(len(t) for t in router.tokens.values()) > 300 and router.next_id > 30


async def test_busy_batches_answer_two_steps_and_still_as_a_plain_shard(tiny_llama) -> None:
    """Every batch counted busy: Decodes wait for two ready steps (unless the chain ends), and the answers
    still join to the plain shard's."""
    router, ahead = await _churn(tiny_llama, seed=11, steps=120, busy_rows=1)
    assert ahead.lookahead.answer_steps == 2
    assert router.extra_steps > 30
    assert sum(len(t) for t in router.tokens.values()) > 200


async def test_a_busy_decode_carries_two_tokens(tiny_llama) -> None:
    config = make_config(tiny_llama, num_blocks=POOL_BLOCKS)
    service = TextGenerationService(build_runner(config), config)
    service.lookahead.depth, service.lookahead.busy_rows = 2, 2  # this batch of 2 is busy
    blocks = [list(range(1 + 4 * i, 5 + 4 * i)) for i in range(2)]
    first = await service.Prefill(pb.PrefillRequest(batch=batch(1, [
        request(i, "a bee kept", blocks[i], slots_of(blocks[i], 64), max_new=20) for i in range(2)])), None)
    second = await service.Decode(pb.DecodeRequest(batches=[first.batch]), None)
    assert [len(g.tokens.ids) for g in second.generations] == [2, 2]  # waited for the second step
    await service.lookahead.settle()
    await service.ClearCache(pb.ClearCacheRequest(), None)


async def test_only_a_busy_batch_waits_for_a_second_step() -> None:
    lookahead = Lookahead(None, None, depth=3, answer_steps=2)  # type: ignore[arg-type]
    lookahead._task, lookahead._task_batch = asyncio.get_running_loop().create_future(), 1  # a chain runs
    step = [_gen(1, [5])]
    lookahead._ready[1] = [AheadResult(step, StepTimes())]
    quiet = await lookahead.next_ready(1, rows=BUSY_ROWS - 1)  # does not wait for a later token
    assert quiet is not None and [g.tokens.ids for g in quiet.generations] == [[5]]
    lookahead._ready[1] = [AheadResult(step, StepTimes())]
    waiting = asyncio.ensure_future(lookahead.next_ready(1, rows=BUSY_ROWS))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    lookahead._ready[1].append(AheadResult([_gen(1, [6])], StepTimes()))
    lookahead._wake()
    busy = await asyncio.wait_for(waiting, 5)
    assert busy is not None and [g.tokens.ids for g in busy.generations] == [[5, 6]]
    lookahead._ready[1] = [AheadResult(step, StepTimes())]
    lookahead._task = None  # the chain ended after one step: no wait for a second
    ended = await lookahead.next_ready(1, rows=BUSY_ROWS)
    assert ended is not None and [g.tokens.ids for g in ended.generations] == [[5]]


async def test_a_failed_step_run_ahead_fails_the_next_rpc_on_its_batch(tiny_llama) -> None:
    config = make_config(tiny_llama, num_blocks=POOL_BLOCKS)
    service = TextGenerationService(build_runner(config), config)
    service.lookahead.depth = 1  # one step per answer
    blocks = list(range(1, 5))
    first = await service.Prefill(pb.PrefillRequest(batch=batch(1, [
        request(0, "a bee kept", blocks, slots_of(blocks, 64), max_new=8)])), None)
    await service.lookahead.settle()
    assert service.lookahead.started == 1

    def broken(requests):
        raise RuntimeError("device lost")

    service.runner.step = broken  # the next step run ahead fails
    second = await service.Decode(pb.DecodeRequest(batches=[first.batch]), None)
    await service.lookahead.settle()
    assert len(second.generations) == 1 and service.lookahead.started == 2
    with pytest.raises(RuntimeError, match="device lost"):
        await service.Decode(pb.DecodeRequest(batches=[second.batch]), None)
    await service.ClearCache(pb.ClearCacheRequest(), None)
    assert not service.batches and service.lookahead.take(1) is None


def _gen(rid: int, ids: list[int], finished=None, error=None, top: int = 0) -> GenerationOut:
    tokens = TokensOut(ids, [-0.5] * len(ids), [f"t{i}" for i in ids], [False] * len(ids))
    return GenerationOut(rid, tokens, None, finished, [TokensOut([9], [-1.0], ["n"], [False])] * top, error)


def test_merged_steps_keep_each_request_s_tokens_in_order_and_its_last_finish() -> None:
    done = FinishedText("abc", 3, FinishReason.LENGTH, None)
    merged = merge_steps([[_gen(1, [5], top=1), _gen(2, [6])], [_gen(1, [7], top=1), _gen(2, [8], done)]])
    assert [(g.request_id, g.tokens.ids, g.tokens.texts, g.finished) for g in merged] == [
        (1, [5, 7], ["t5", "t7"], None), (2, [6, 8], ["t6", "t8"], done)]
    assert len(merged[0].top_tokens) == 2 and merged[0].tokens.logprobs == [-0.5, -0.5]


def test_a_request_failing_at_a_later_step_keeps_its_earlier_tokens_apart() -> None:
    merged = merge_steps([[_gen(1, [5]), _gen(2, [6])], [_gen(1, [], error="boom"), _gen(2, [8])]])
    assert [(g.request_id, g.tokens.ids, g.error) for g in merged] == [
        (1, [5], None), (1, [], "boom"), (2, [6, 8], None)]


@pytest.mark.parametrize("raw, depth", [("", 3), ("on", 3), ("0", 0), ("off", 0), ("1", 1), ("2", 2)])
def test_the_depth_comes_from_the_environment(monkeypatch, raw: str, depth: int) -> None:
    monkeypatch.setenv("PRISM_LOOKAHEAD", raw)
    assert depth_from_env() == depth


def test_a_bad_depth_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("PRISM_LOOKAHEAD", "two")
    with pytest.raises(ValueError, match="PRISM_LOOKAHEAD"):
        depth_from_env()


@pytest.mark.parametrize("raw, steps", [("", 2), ("1", 1), ("3", 3)])
def test_the_answer_steps_come_from_the_environment(monkeypatch, raw: str, steps: int) -> None:
    monkeypatch.setenv("PRISM_ANSWER_STEPS", raw)
    assert answer_steps_from_env() == steps


@pytest.mark.parametrize("raw", ["0", "two", "-1"])
def test_bad_answer_steps_are_refused(monkeypatch, raw: str) -> None:
    monkeypatch.setenv("PRISM_ANSWER_STEPS", raw)
    with pytest.raises(ValueError, match="PRISM_ANSWER_STEPS"):
        answer_steps_from_env()
