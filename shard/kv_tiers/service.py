"""The shard's side of the KV-tier protocol (docs/kv-tiers-wire.md): the ``KvTierService`` servicer
(Transfer: the router's prefetch copies while requests wait) and :func:`step_with_copies`, which runs a
Prefill's or Decode's ``kv_copies`` before its forward."""

from __future__ import annotations

import asyncio

from proto.generate.v3 import generate_pb2 as pb
from proto.generate.v3 import generate_pb2_grpc as pb_grpc
from shard import step_thread
from shard.batch import RequestState
from shard.errors import InvalidRequest
from shard.kv_tiers.copies import Copy, from_pb
from shard.kv_tiers.layerwise import layerwise
from shard.kv_tiers.recompute import recompute_missing
from shard.kv_tiers.tiers import KvTiers, agree


def parse_copies(tiers: KvTiers | None, messages) -> list[Copy]:
    """The request's ``kv_copies``, checked against this shard's tiers. Raises InvalidRequest."""
    if not messages:
        return []
    if tiers is None:
        raise InvalidRequest(
            "kv_copies: this shard runs without KV tiers (--kv-host-tokens / --kv-disk-tokens)"
        )
    copies = from_pb(messages)
    tiers.check(copies)
    return copies


async def step_with_copies(runner, tiers: KvTiers | None, requests: list[RequestState], copies: list[Copy],
                           defer: bool):
    """Run ``copies`` (after every list sent before), recompute what a failed copy into the device should
    have provided, then ``runner.step(requests)`` with deferred loads landing layer by layer (``defer``: a
    Prefill, whose forward is eager). Returns (generations, times, failed copy indices)."""
    if not copies:
        generations, times = await step_thread.run(runner.step, requests)
        return generations, times, []
    assert tiers is not None
    outcome = await asyncio.get_running_loop().run_in_executor(tiers.worker, tiers.run, copies, defer)
    tp = getattr(runner.model, "tp", None)
    if tp is not None:
        outcome = agree(outcome, copies, tp, runner.loaded.device)

    def work():
        with layerwise(runner.kv, outcome.loads):
            if outcome.bad_device:
                recompute_missing(runner, requests, outcome.bad_device)
            return runner.step(requests)

    generations, times = await step_thread.run(work)
    return generations, times, outcome.failed


class KvTierServicer(pb_grpc.KvTierServiceServicer):
    """Transfer runs its copies on the tiers' worker, beside (not under) the step lock: prefetches overlap
    the running batch's steps. The router only names free slots as destinations."""

    def __init__(self, tiers: KvTiers | None) -> None:
        self.tiers = tiers

    async def Transfer(self, request: pb.KvTransferRequest, context) -> pb.KvTransferResponse:
        copies = parse_copies(self.tiers, request.copies)
        if not copies:
            return pb.KvTransferResponse()
        assert self.tiers is not None
        outcome = await asyncio.get_running_loop().run_in_executor(self.tiers.worker, self.tiers.run, copies)
        return pb.KvTransferResponse(failed=outcome.failed)
