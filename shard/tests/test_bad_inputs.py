"""Bad input gets a gRPC error saying what was wrong; the shard keeps serving, and no other request's KV
or batch state changes."""

from __future__ import annotations

import grpc
import pytest

from proto.generate.v3 import generate_pb2 as pb
from shard.tests.helpers import Blocks, batch, request, slots_of

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
TEXT = "The library opens at nine and closes at six."


def _bad_requests() -> dict[str, tuple[pb.Request, str]]:
    """name -> (request, expected message fragment). Block 60.. are never used by the live request."""
    good_blocks = [60, 61, 62]
    return {
        "block outside pool": (
            request(9, TEXT, [60, 999], slots_of([60, 999], 20)),
            "outside the KV pool of 64",
        ),
        "slot not in its block": (
            request(9, TEXT, good_blocks, [5] + slots_of(good_blocks, 20)[1:]),
            "slot 5 at position 0 is not in block 60",
        ),
        "slots shorter than prompt": (
            request(9, TEXT, good_blocks, slots_of(good_blocks, 3)),
            "3 slots for a prompt of",
        ),
        "slots beyond blocks": (request(9, TEXT, [60], slots_of(good_blocks, 20)), "do not fit in 1 blocks"),
        "cache_len beyond prompt": (
            request(9, TEXT, good_blocks, slots_of(good_blocks, 20), cache_len=40),
            "cache_len 40 must be below the prompt length",
        ),
        "empty input": (_no_special(request(9, "", good_blocks, slots_of(good_blocks, 20))), "empty input"),
        "no text chunk": (
            _image_only(request(9, TEXT, good_blocks, slots_of(good_blocks, 20))),
            "no text chunk",
        ),
        "no blocks": (request(9, TEXT, [], []), "no blocks/slots given"),
        "prompt over max_input_tokens": (
            request(9, TEXT * 10, list(range(40, 60)), slots_of(list(range(40, 60)), 300)),
            "over max_input_tokens 64",
        ),
    }


def _no_special(r: pb.Request) -> pb.Request:
    r.add_special_tokens = False
    return r


def _image_only(r: pb.Request) -> pb.Request:
    r.input_chunks.CopyFrom(pb.Input(chunks=[pb.InputChunk(image=pb.Image(data=b"x", mimetype="image/png"))]))
    return r


async def _expect(call, code: grpc.StatusCode, fragment: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    assert fragment in err.value.details()


async def _warm(stub) -> None:
    warm = pb.Request(
        id=0,
        input_chunks=pb.Input(chunks=[pb.InputChunk(text="_test " * 8)]),
        truncate=8,
        stopping_parameters=pb.StoppingCriteriaParameters(max_new_tokens=4),
    )
    await stub.Warmup(
        pb.WarmupRequest(
            batch=pb.Batch(id=0, requests=[warm], size=1),
            max_input_tokens=64,
            max_total_tokens=128,
            max_prefill_tokens=128,
        )
    )


async def _decode_ids(stub, cached: pb.CachedBatch, tokens: int) -> tuple[list[int], pb.CachedBatch]:
    """Decode until at least ``tokens`` new tokens (an answer may carry several: shard.lookahead)."""
    ids: list[int] = []
    while len(ids) < tokens:
        resp = await stub.Decode(pb.DecodeRequest(batches=[cached]))
        ids.extend(resp.generations[0].tokens.ids)
        cached = resp.batch
    return ids, cached


async def test_each_bad_input_fails_alone_and_live_request_is_untouched(uds_stub) -> None:
    stub, service, _ = uds_stub
    await _warm(stub)
    live = request(1, TEXT, *Blocks().take(40), max_new=20)
    reference = await stub.Prefill(pb.PrefillRequest(batch=batch(1, [live])))
    expected, _ = await _decode_ids(stub, reference.batch, 4)
    await stub.ClearCache(pb.ClearCacheRequest(id=1))

    started = await stub.Prefill(pb.PrefillRequest(batch=batch(1, [live])))
    for bad, fragment in _bad_requests().values():
        await _expect(stub.Prefill(pb.PrefillRequest(batch=batch(2, [bad]))), INVALID, fragment)
        # a bad request next to a good one in the same batch fails the whole call, before any write
        await _expect(
            stub.Prefill(
                pb.PrefillRequest(batch=batch(3, [request(4, TEXT, *Blocks(next_block=50).take(30)), bad]))
            ),
            INVALID,
            fragment,
        )
    assert sorted(service.batches) == [1]
    got, _ = await _decode_ids(stub, started.batch, 4)
    assert got[:4] == expected[:4]


async def test_unknown_batches_and_ids(uds_stub) -> None:
    stub, service, _ = uds_stub
    live = await stub.Prefill(
        pb.PrefillRequest(batch=batch(1, [request(1, TEXT, *Blocks().take(40), max_new=9)]))
    )
    ghost = pb.CachedBatch(id=77, request_ids=[5], size=1)
    await _expect(stub.Decode(pb.DecodeRequest(batches=[live.batch, ghost])), NOT_FOUND, "batch 77 not found")
    await _expect(stub.Decode(pb.DecodeRequest()), INVALID, "at least one batch")
    await _expect(
        stub.FilterBatch(pb.FilterBatchRequest(batch_id=77, request_ids=[1])), NOT_FOUND, "batch 77"
    )
    await _expect(
        stub.FilterBatch(pb.FilterBatchRequest(batch_id=1, request_ids=[1, 8])),
        INVALID,
        "request ids [8] are not in batch 1",
    )
    await _expect(
        stub.Prefill(
            pb.PrefillRequest(
                batch=batch(2, [request(2, TEXT, *Blocks(next_block=30).take(40))]), cached_batch=ghost
            )
        ),
        NOT_FOUND,
        "batch 77 not found",
    )
    await _expect(stub.Prefill(pb.PrefillRequest(batch=pb.Batch(id=5))), INVALID, "has no requests")
    empty = await stub.Prefill(
        pb.PrefillRequest(batch=batch(6, [request(6, TEXT, *Blocks(next_block=20).take(40))]))
    )
    await stub.FilterBatch(pb.FilterBatchRequest(batch_id=6, request_ids=[]))
    await _expect(
        stub.Decode(pb.DecodeRequest(batches=[empty.batch])), INVALID, "batch 6 has no requests left"
    )
    await stub.ClearCache(pb.ClearCacheRequest(id=6))
    ids, _ = await _decode_ids(stub, live.batch, 2)  # the live batch survived every failure unchanged
    assert len(ids) >= 2 and sorted(service.batches) == [1]


async def test_two_requests_writing_one_slot_are_rejected(uds_stub) -> None:
    stub, _, _ = uds_stub
    blocks, slots = Blocks().take(40)
    two = batch(1, [request(1, TEXT, blocks, slots), request(2, TEXT, blocks, slots)])
    await _expect(stub.Prefill(pb.PrefillRequest(batch=two)), INVALID, "would write KV block")


async def test_a_request_cannot_overwrite_a_live_requests_blocks(uds_stub) -> None:
    stub, service, _ = uds_stub
    long_text = TEXT * 4
    a_blocks = [1, 2, 3]
    live = await stub.Prefill(
        pb.PrefillRequest(
            batch=batch(1, [request(1, long_text, a_blocks, slots_of(a_blocks, 40), truncate=32)])
        )
    )
    first_token = live.generations[0].tokens.ids[0]
    # shares A's two full prompt blocks and rewrites only the last prompt token (identical): allowed
    b_blocks = [1, 2, 10]
    reuse = request(2, long_text, b_blocks, slots_of(b_blocks, 40), truncate=32, cache_len=31)
    resp = await stub.Prefill(pb.PrefillRequest(batch=batch(2, [reuse])))
    assert resp.generations[0].tokens.ids[0] == first_token
    # writes its own (different) prompt into A's block 2: refused, A untouched
    c_blocks = [2, 11, 12]
    bad = request(3, "Different words here", c_blocks, slots_of(c_blocks, 40))
    await _expect(
        stub.Prefill(pb.PrefillRequest(batch=batch(3, [bad]))),
        INVALID,
        "request 3: would write KV block 2 held by live request 1",
    )
    assert sorted(service.batches) == [1, 2]


async def test_decoding_past_the_allocated_slots_is_an_error_not_a_crash(uds_stub) -> None:
    stub, _, _ = uds_stub
    n = len(
        (
            await stub.Prefill(
                pb.PrefillRequest(
                    batch=batch(9, [request(9, TEXT, *Blocks().take(40), prefill_logprobs=True)])
                )
            )
        )
        .generations[0]
        .prefill_tokens.ids
    )
    blocks = Blocks(next_block=20).take(n + 1)[0]
    resp = await stub.Prefill(
        pb.PrefillRequest(batch=batch(1, [request(1, TEXT, blocks, slots_of(blocks, n + 1))]))
    )
    resp = await stub.Decode(pb.DecodeRequest(batches=[resp.batch]))  # writes position n, the last slot
    await _expect(
        stub.Decode(pb.DecodeRequest(batches=[resp.batch])), INVALID, f"position {n + 1} has no slot"
    )
    await stub.Health(pb.HealthRequest())
