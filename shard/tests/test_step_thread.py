"""Every step of a shard, whichever RPC starts it (Prefill, Decode, the decode steps run ahead), runs on one
thread (shard.step_thread), not the event loop's: one OpenMP team in the process."""

from __future__ import annotations

import threading

from proto.generate.v3 import generate_pb2 as pb
from shard.factory import build_runner
from shard.server import TextGenerationService
from shard.tests.helpers import batch, make_config, request, slots_of


async def test_prefill_decode_and_steps_run_ahead_share_one_thread(tiny_llama) -> None:
    config = make_config(tiny_llama, num_blocks=40)
    service = TextGenerationService(build_runner(config), config)
    threads: list[tuple[int, str]] = []
    step = service.runner.step

    def recorded(requests):
        threads.append((threading.get_ident(), threading.current_thread().name))
        return step(requests)

    service.runner.step = recorded
    blocks = list(range(1, 5))
    resp = await service.Prefill(pb.PrefillRequest(batch=batch(1, [
        request(0, "a bee kept", blocks, slots_of(blocks, 64), max_new=12)])), None)
    while resp.HasField("batch"):
        resp = await service.Decode(pb.DecodeRequest(batches=[resp.batch]), None)
    await service.lookahead.settle()
    assert service.lookahead.started > 0 and len(threads) >= 12
    assert len(set(threads)) == 1 and threads[0][1].startswith("shard-step")
