"""A prefill reading a cached prefix, or a prompt prefilled in chunks, gives the cold prefill's tokens and
logprobs (fp32, within 1e-5)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from proto.generate.v3 import generate_pb2 as pb
from shard.factory import build_service
from shard.tests.helpers import Blocks, batch, make_config, request, run_to_end, slots_of

PROMPT = (
    "Long system prompts, retrieved passages and tool outputs often repeat from one request to the next. "
    "A cache that keeps them can answer the first token much sooner."
)
NEW = 12
TOL = 1e-5


def _result(gens: list[pb.Generation]) -> tuple[list[int], list[float], list[float]]:
    """(generated ids, their logprobs, prompt logprobs from the first emission)."""
    ids = [t for g in gens for t in g.tokens.ids]
    logprobs = [lp for g in gens for lp in g.tokens.logprobs]
    return ids, logprobs, list(gens[0].prefill_tokens.logprobs)


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= TOL for x, y in zip(a, b))


async def _generate(
    service, rid: int, blocks: list[int], **extra
) -> tuple[list[int], list[float], list[float]]:
    req = request(
        rid,
        PROMPT,
        blocks,
        slots_of(blocks, _prompt_len(service) + NEW),
        max_new=NEW,
        prefill_logprobs=True,
        **extra,
    )
    return _result((await run_to_end(service, pb.PrefillRequest(batch=batch(rid, [req]))))[rid])


def _prompt_len(service) -> int:
    return len(service.runner.detok.encode(PROMPT, True, 0))


@pytest.fixture(params=["reference", "sdpa"])
def service(tiny_model: Path, request: pytest.FixtureRequest):
    return build_service(make_config(tiny_model, attention_backend=request.param))


@pytest.mark.parametrize("cache_len", [16, 32, 37])
async def test_cached_prefix_equals_cold_prefill(service, cache_len: int) -> None:
    n = _prompt_len(service)
    assert cache_len < n
    pool = Blocks()
    cold_ids, cold_lps, cold_prompt = await _generate(service, 1, pool.take(n + NEW)[0])
    # an earlier request writes the prompt's KV into `shared`; a later one reuses its first cache_len tokens
    shared = pool.take(n + NEW)[0]
    await _generate(service, 2, shared)
    keep = -(-cache_len // 16)
    reused = shared[:keep] + pool.take(n + NEW - keep * 16)[0]
    ids, lps, prompt_lps = await _generate(service, 3, reused, cache_len=cache_len)
    assert ids == cold_ids
    assert _close(lps, cold_lps)
    assert all(math.isnan(x) for x in prompt_lps[: cache_len + 1])  # not computed in this prefill
    assert _close(prompt_lps[cache_len + 1 :], cold_prompt[cache_len + 1 :])


@pytest.mark.parametrize("chunk_len,cache_len", [(8, 0), (21, 0), (10, 16)])
async def test_chunked_prefill_equals_unchunked(service, chunk_len: int, cache_len: int) -> None:
    n = _prompt_len(service)
    pool = Blocks()
    cold_ids, cold_lps, cold_prompt = await _generate(service, 1, pool.take(n + NEW)[0])
    shared = pool.take(n + NEW)[0]
    if cache_len:
        await _generate(service, 2, shared)
    blocks = shared if cache_len else pool.take(n + NEW)[0]
    req = request(
        5,
        PROMPT,
        blocks,
        slots_of(blocks, n + NEW),
        max_new=NEW,
        prefill_logprobs=True,
        chunk_len=chunk_len,
        cache_len=cache_len,
    )
    first = await service.Prefill(pb.PrefillRequest(batch=batch(5, [req])), None)
    assert list(first.generations) == []  # no Generation before the prompt is consumed
    assert first.batch.current_tokens == n - cache_len - chunk_len
    gens = (
        await run_to_end(
            service,
            pb.PrefillRequest(
                batch=batch(6, [request(6, PROMPT, *pool.take(n + NEW), max_new=NEW)]),
                cached_batch=first.batch,
            ),
        )
    )[5]
    ids, lps, prompt_lps = _result(gens)
    assert ids == cold_ids
    assert _close(lps, cold_lps)
    assert _close(prompt_lps[cache_len + 1 :], cold_prompt[cache_len + 1 :])


async def test_prompt_alternatives_do_not_depend_on_chunking(service) -> None:
    """With top_n_tokens, each prompt position's alternatives (ids, and logprobs within 1e-5) are the same
    whether the prompt is computed whole or in pieces."""
    n, pool = _prompt_len(service), Blocks()
    tops = []
    for rid, extra in ((1, {}), (2, {"chunk_len": 7})):
        req = request(rid, PROMPT, *pool.take(n + NEW), max_new=2, prefill_logprobs=True, top_n_tokens=3, **extra)
        first = (await run_to_end(service, pb.PrefillRequest(batch=batch(rid, [req]))))[rid][0]
        tops.append([(list(t.ids), list(t.logprobs)) for t in first.prefill_top_tokens])
    whole, chunked = tops
    assert len(whole) == n and whole[0] == ([], []) and all(len(ids) == 3 for ids, _ in whole[1:])
    assert [ids for ids, _ in chunked] == [ids for ids, _ in whole]
    assert all(_close(a, b) for (_, a), (_, b) in zip(chunked, whole))


async def test_cache_len_really_reads_the_pool(service) -> None:
    """Control: claiming a cached prefix over blocks nobody wrote changes the logprobs (so the tests above
    compare KV read from the pool, not a recomputation)."""
    n = _prompt_len(service)
    pool = Blocks()
    _, cold_lps, _ = await _generate(service, 1, pool.take(n + NEW)[0])
    _, lps, _ = await _generate(service, 2, pool.take(n + NEW)[0], cache_len=16)
    assert not _close(lps, cold_lps)


async def test_chunks_without_prefill_logprobs(service) -> None:
    """No logits are needed for a mid-prompt chunk; the generated tokens still match the unchunked run."""
    n, pool = _prompt_len(service), Blocks()
    whole = await run_to_end(
        service, pb.PrefillRequest(batch=batch(1, [request(1, PROMPT, *pool.take(n + NEW))]))
    )
    chunked = request(2, PROMPT, *pool.take(n + NEW), chunk_len=5)
    got = await run_to_end(service, pb.PrefillRequest(batch=batch(2, [chunked])))
    assert [t for g in got[2] for t in g.tokens.ids] == [t for g in whole[1] for t in g.tokens.ids]


@pytest.mark.parametrize("budget", [9, 16])
async def test_later_chunks_respect_the_prefill_budget_beside_running_decodes(service, budget: int) -> None:
    """Warmup's max_prefill_tokens bounds every forward: a long prompt merged into a running batch is computed
    in pieces of at most ``budget - decoding requests`` tokens, the running requests get a token at every
    step meanwhile, and the prompt's tokens and logprobs equal the unchunked run. Each step's CachedBatch says
    how much of each prompt is computed (``prompt_computed``: what a router caches of a prompt left mid-way)."""
    n, pool = _prompt_len(service), Blocks()
    cold_ids, cold_lps, cold_prompt = await _generate(service, 1, pool.take(n + NEW)[0])
    service.runner.max_prefill_tokens = budget
    # NOTE: no step run ahead (shard.lookahead, tested apart): it would move cache_len while this test reads it
    service.lookahead.depth = 0
    running = [request(10 + i, "Two short ones", *pool.take(20 + 40), max_new=40) for i in range(2)]
    resp = await service.Prefill(pb.PrefillRequest(batch=batch(10, running)), None)
    blocks = pool.take(n + NEW)[0]
    slots = slots_of(blocks, n + NEW)
    long = request(5, PROMPT, blocks, slots, max_new=NEW, prefill_logprobs=True, chunk_len=4)
    resp = await service.Prefill(pb.PrefillRequest(batch=batch(5, [long]), cached_batch=resp.batch), None)
    pieces, gens = [], []
    while not any(g.request_id == 5 for g in resp.generations):
        assert resp.batch.current_tokens <= budget
        held = service.batches[resp.batch.id].requests
        assert list(resp.batch.prompt_computed) == [held[0].prompt_len, held[1].prompt_len, 4 + sum(pieces)]
        assert {g.request_id for g in resp.generations} == {10, 11}  # the decodes never stall
        before = service.batches[resp.batch.id].requests[2].cache_len
        resp = await service.Decode(pb.DecodeRequest(batches=[resp.batch]), None)
        pieces.append(service.batches[resp.batch.id].requests[2].cache_len - before)
    assert len(pieces) >= 2 and all(0 < p <= budget - 2 for p in pieces)
    assert sum(pieces) + 4 == n
    while True:
        gens += [g for g in resp.generations if g.request_id == 5]
        if not resp.HasField("batch") or 5 not in resp.batch.request_ids:
            break
        resp = await service.Decode(pb.DecodeRequest(batches=[resp.batch]), None)
        if any(g.request_id == 5 and g.HasField("generated_text") for g in resp.generations):
            gens += [g for g in resp.generations if g.request_id == 5]
            break
    ids, lps, prompt_lps = _result(gens)
    assert ids == cold_ids
    assert _close(lps, cold_lps)
    assert _close(prompt_lps[1:], cold_prompt[1:])
