"""The servicer over a real Unix socket: handshake, and batches concatenated, filtered and cleared as TGI's
shard does (tgi-compat 1.5)."""

from __future__ import annotations

import os

import grpc
import pytest

from proto.generate.v3 import generate_pb2 as pb
from shard.tests.helpers import Blocks, batch, request


async def test_handshake_info_discovery_health_and_warmup(uds_stub) -> None:
    stub, service, config = uds_stub
    assert os.path.exists(config.socket_path)
    urls = (await stub.ServiceDiscovery(pb.ServiceDiscoveryRequest())).urls
    assert list(urls) == [f"unix://{config.socket_path}"]
    await stub.ClearCache(pb.ClearCacheRequest())
    info = await stub.Info(pb.InfoRequest())
    assert (info.requires_padding, info.use_prefix_caching, info.support_chunking) == (False, True, True)
    assert (info.dtype, info.device_type, info.attention_impl, info.block_size) == (
        "torch.float32",
        "cpu",
        "paged",
        16,
    )
    assert not info.HasField("window_size")
    assert info.kv_capacity_tokens == 64 * 16  # prism extension: the pool, known before Warmup
    resp = await stub.Warmup(_router_warmup(max_input=100, max_total=200, prefill=300))
    assert resp.max_supported_total_tokens == info.kv_capacity_tokens
    assert (resp.max_input_tokens, resp.max_total_tokens) == (100, 200)
    await stub.Health(pb.HealthRequest())


async def test_warmup_chooses_limits_when_unset(uds_stub) -> None:
    stub, _, _ = uds_stub
    resp = await stub.Warmup(
        pb.WarmupRequest(batch=_router_warmup(100, 200, 300).batch, max_prefill_tokens=300)
    )
    assert (resp.max_total_tokens, resp.max_input_tokens) == (
        63 * 16,
        63 * 16 - 1,
    )  # usable capacity (block 0 reserved) < 4096 positions


async def test_a_second_warmup_starts_over(uds_stub) -> None:
    """A restarted router warms the same shard up again: the earlier Warmup's max_input_tokens must not
    reject the new warmup batch."""
    stub, _, _ = uds_stub
    await stub.Warmup(_router_warmup(max_input=100, max_total=200, prefill=300))
    resp = await stub.Warmup(
        pb.WarmupRequest(batch=_router_warmup(300, 400, 600).batch, max_prefill_tokens=600)
    )
    assert resp.max_input_tokens == (64 - 1) * 16 - 1  # the usable pool (block 0 reserved), input one less


async def test_warmup_rejects_limits_over_capacity(uds_stub) -> None:
    stub, _, _ = uds_stub
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Warmup(_router_warmup(max_input=100, max_total=5000, prefill=300))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_total_tokens 5000 exceeds the KV pool capacity of 1008 tokens" in err.value.details()


async def test_warmup_refuses_a_total_that_needs_the_reserved_block(uds_stub) -> None:
    """64 blocks x 16 = 1,024 tokens reported, but block 0 is the router's: 1,024 could never be admitted."""
    stub, _, _ = uds_stub
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Warmup(_router_warmup(max_input=100, max_total=1024, prefill=300))
    assert "exceeds the KV pool capacity of 1008 tokens (block 0 reserved)" in err.value.details()


def _router_warmup(max_input: int, max_total: int, prefill: int) -> pb.WarmupRequest:
    """As TGI's router builds it: "_test " chunks, an image chunk first, no blocks/slots, all options."""
    params = pb.NextTokenChooserParameters(
        temperature=0.9,
        top_k=10,
        top_p=0.9,
        typical_p=0.9,
        do_sample=False,
        seed=0,
        repetition_penalty=1.2,
        frequency_penalty=0.1,
        watermark=True,
    )
    reqs = []
    for i, chunk in enumerate([max_input, prefill - max_input]):
        chunks = [pb.InputChunk(text="_test " * chunk)]
        if i == 0:
            chunks.insert(0, pb.InputChunk(image=pb.Image(data=b"\xff\xd8\xff", mimetype="image/jpeg")))
        reqs.append(
            pb.Request(
                id=i,
                input_chunks=pb.Input(chunks=chunks),
                truncate=chunk,
                parameters=params,
                stopping_parameters=pb.StoppingCriteriaParameters(
                    max_new_tokens=max_total - chunk, ignore_eos_token=True
                ),
                prefill_logprobs=True,
                top_n_tokens=20,
                add_special_tokens=True,
            )
        )
    return pb.WarmupRequest(
        batch=pb.Batch(id=0, requests=reqs, size=2, max_tokens=max_input),
        max_input_tokens=max_input,
        max_total_tokens=max_total,
        max_prefill_tokens=prefill,
    )


async def _solo_tokens(stub, text: str, steps: int, bid: int) -> list[int]:
    blocks = Blocks(next_block=40)
    resp = await stub.Prefill(
        pb.PrefillRequest(batch=batch(bid, [request(bid, text, *blocks.take(60), max_new=50)]))
    )
    ids = list(resp.generations[0].tokens.ids)
    while len(ids) < steps:  # NOTE: an answer may carry several tokens (shard.lookahead)
        resp = await stub.Decode(pb.DecodeRequest(batches=[resp.batch]))
        ids.extend(resp.generations[0].tokens.ids)
    await stub.ClearCache(pb.ClearCacheRequest(id=bid))
    return ids


async def test_concatenate_filter_clear_as_tgi(uds_stub) -> None:
    stub, service, _ = uds_stub
    # NOTE: one step per answer, as the steps below count (several: shard/tests/test_lookahead.py)
    service.lookahead.depth = 1
    texts = {0: "The train to the coast", 1: "My grandmother kept bees", 2: "Hello!"}
    solo = {rid: await _solo_tokens(stub, t, 6, 100 + rid) for rid, t in texts.items()}
    blocks = Blocks()
    got: dict[int, list[int]] = {0: [], 1: [], 2: []}

    def collect(resp) -> None:
        for g in resp.generations:
            got[g.request_id].extend(g.tokens.ids)

    first = await stub.Prefill(
        pb.PrefillRequest(
            batch=batch(
                1,
                [
                    request(0, texts[0], *blocks.take(40), max_new=3),
                    request(1, texts[1], *blocks.take(40), max_new=6),
                ],
            )
        )
    )
    collect(first)
    second = await stub.Prefill(
        pb.PrefillRequest(batch=batch(2, [request(2, texts[2], *blocks.take(40), max_new=6)]))
    )
    collect(second)
    assert (first.batch.id, list(first.batch.request_ids), second.batch.id) == (1, [0, 1], 2)

    merged = await stub.Decode(pb.DecodeRequest(batches=[first.batch, second.batch]))
    collect(merged)
    assert (merged.batch.id, list(merged.batch.request_ids), merged.batch.size) == (1, [0, 1, 2], 3)
    assert merged.batch.max_tokens == 3 * 3 * 16  # three requests holding 3 blocks each (TGI: batch blocks)
    assert merged.HasField("concat_ns") and merged.batch.current_tokens == 3
    with pytest.raises(grpc.aio.AioRpcError) as err:  # the second batch was merged away
        await stub.Decode(pb.DecodeRequest(batches=[second.batch]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    step = await stub.Decode(pb.DecodeRequest(batches=[merged.batch]))  # request 0 reaches max_new_tokens=3
    collect(step)
    done = {g.request_id: g for g in step.generations if g.HasField("generated_text")}
    assert list(done) == [0] and done[0].generated_text.finish_reason == pb.FINISH_REASON_LENGTH
    assert done[0].generated_text.generated_tokens == 3 and not done[0].generated_text.HasField("seed")

    step = await stub.Decode(pb.DecodeRequest(batches=[step.batch]))  # TGI: finished requests keep generating
    assert sorted(g.request_id for g in step.generations) == [0, 1, 2]
    collect(step)
    filtered = await stub.FilterBatch(pb.FilterBatchRequest(batch_id=1, request_ids=[1, 2]))
    assert (filtered.batch.id, list(filtered.batch.request_ids), filtered.batch.size) == (1, [1, 2], 2)
    step = await stub.Decode(pb.DecodeRequest(batches=[filtered.batch]))
    collect(step)
    assert sorted(g.request_id for g in step.generations) == [1, 2]
    assert all(got[rid][: len(solo[rid])] == solo[rid][: len(got[rid])] for rid in got)

    await stub.ClearCache(pb.ClearCacheRequest(id=1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Decode(pb.DecodeRequest(batches=[filtered.batch]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "batch 1 not found" in err.value.details()


async def test_batch_is_dropped_when_every_request_stops(uds_stub) -> None:
    stub, service, _ = uds_stub
    blocks = Blocks()
    resp = await stub.Prefill(
        pb.PrefillRequest(
            batch=batch(
                7,
                [
                    request(0, "Good code", *blocks.take(30), max_new=1),
                    request(1, "Tests", *blocks.take(30), max_new=1),
                ],
            )
        )
    )
    assert not resp.HasField("batch")
    assert [g.generated_text.finish_reason for g in resp.generations] == [pb.FINISH_REASON_LENGTH] * 2
    assert 7 not in service.batches


async def test_reflection_lists_the_service(uds_stub) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    _, _, config = uds_stub
    async with grpc.aio.insecure_channel(f"unix://{config.socket_path}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for answer in stub.ServerReflectionInfo(iter([request])):
            names = [s.name for s in answer.list_services_response.service]
            break
    assert "generate.v3.TextGenerationService" in names


async def test_routers_liveness_probe_prefill(uds_stub) -> None:
    """TGI's /health probe after a failure: id/batch u64::MAX, block 0, slot 0, one token, max_new 1."""
    stub, service, _ = uds_stub
    top = 2**64 - 1
    probe = pb.Request(
        id=top,
        input_chunks=pb.Input(chunks=[pb.InputChunk(text="liveness")]),
        truncate=1,
        add_special_tokens=False,
        blocks=[0],
        slots=[0],
        parameters=pb.NextTokenChooserParameters(
            temperature=1.0, top_p=1.0, typical_p=1.0, repetition_penalty=1.0
        ),
        stopping_parameters=pb.StoppingCriteriaParameters(max_new_tokens=1),
    )
    resp = await stub.Prefill(
        pb.PrefillRequest(batch=pb.Batch(id=top, requests=[probe], size=1, max_tokens=2, max_blocks=1))
    )
    assert [g.request_id for g in resp.generations] == [top] and not resp.HasField("batch")
    assert service.batches == {}


async def test_warmup_with_2048_positions_chooses_the_model_bound_and_clamps_prompts(
    tmp_path_factory, caplog
) -> None:
    """A TinyLlama-sized config (max_position_embeddings 2,048), the router leaving both limits open and
    its warmup prompt as long as the 4,096-token prefill budget: the shard picks 2,048 / 2,047, cuts the
    warmup prompt to fit and says why in the log."""
    import logging
    import shutil
    import tempfile

    from proto.generate.v3 import generate_pb2_grpc as pb_grpc
    from shard.demo_model import build_demo_model
    from shard.factory import build_runner
    from shard.server import TextGenerationService, build_server
    from shard.tests.helpers import make_config

    model = build_demo_model(tmp_path_factory.mktemp("pos2048"), "llama", "tiny", max_positions=2048)
    folder = tempfile.mkdtemp(prefix="shard-", dir="/tmp")
    config = make_config(model, uds_path=f"{folder}/s", num_blocks=1024)
    server = build_server(TextGenerationService(build_runner(config), config), config)
    await server.start()
    channel = grpc.aio.insecure_channel(f"unix://{config.socket_path}")
    try:
        stub = pb_grpc.TextGenerationServiceStub(channel)
        warm = _router_warmup(max_input=4096, max_total=4097, prefill=4096)
        del warm.batch.requests[1:]
        warm.ClearField("max_input_tokens")
        warm.ClearField("max_total_tokens")
        warm.batch.requests[0].stopping_parameters.max_new_tokens = 1
        with caplog.at_level(logging.INFO, logger="shard.server"):
            resp = await stub.Warmup(warm)
        assert (resp.max_total_tokens, resp.max_input_tokens) == (2048, 2047)
        assert "bound by max_position_embeddings" in caplog.text
    finally:
        await channel.close()
        await server.stop(grace=None)
        shutil.rmtree(folder, ignore_errors=True)
async def test_info_reports_prefix_caching_off_when_configured(uds_stub) -> None:
    """PREFIX_CACHING=0 reaches the router through Info, as TGI's shard reports it."""
    import dataclasses

    stub, service, config = uds_stub
    assert (await stub.Info(pb.InfoRequest())).use_prefix_caching
    service.config = dataclasses.replace(config, prefix_caching=False)
    assert not (await stub.Info(pb.InfoRequest())).use_prefix_caching
