"""Data parallelism: one router in front of several replicas (shard groups, each with its own batcher,
scheduler and tree), the :class:`~router_py.backend_api.Backend` the HTTP layer talks to when the router is
given ``--replica-shard-uds-path`` more than once (``--data-parallel N`` on the launcher).

Each request goes to the replica :class:`~router_py.scheduling.replica_choice.ReplicaChooser` picks from
every replica's tree (read through :meth:`Batcher.peek_prefix`) and load; that replica's batcher then runs
PRISM's scheduler and DART as with one replica. docs/data-parallel.md.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import AsyncIterator, Sequence

from prism_cache import block_hashes
from router_py.backend_api import BackendInfo, InferEvent, ValidRequest
from router_py.engine.batcher import Batcher
from router_py.scheduling.replica_choice import ReplicaChoiceParams, ReplicaChooser


def common_info(infos: Sequence[BackendInfo]) -> BackendInfo:
    """What every replica accepts: the least of the token limits (replicas may size their KV pools
    differently); raises ValueError when the replicas differ in anything else (block size, dtype...)."""
    limits = ("max_input_tokens", "max_total_tokens", "max_batch_total_tokens")
    least = {name: min(getattr(i, name) for i in infos) for name in limits}
    if len({dataclasses.replace(i, **least) for i in infos}) > 1:
        raise ValueError(f"the replicas' shards differ (they must serve the same model alike): {infos}")
    return dataclasses.replace(infos[0], **least)


class DataParallelBackend:
    """``replicas``: batchers after their handshakes, with the same model, block size and dtype (raises
    ValueError otherwise). :attr:`info` holds the least of their token limits, for validation.
    ``prefix_caching``: whether the replicas' routers cache prefixes at all (off: every request goes by load,
    none counts as reusing another's blocks in flight)."""

    def __init__(
        self,
        replicas: Sequence[Batcher],
        params: ReplicaChoiceParams = ReplicaChoiceParams(),
        prefix_caching: bool = True,
    ) -> None:
        if not replicas:
            raise ValueError("no replica")
        self.info: BackendInfo = common_info([b.info for b in replicas])
        self.replicas = list(replicas)
        self.chooser = ReplicaChooser(
            [b.peek_prefix for b in replicas], self.info.block_size, params,
            [b.info.max_batch_total_tokens for b in replicas],  # NOTE: TGI's name for the KV pool's tokens
        )
        self.prefix_caching = prefix_caching
        self._ids = itertools.count()

    async def generate_stream(self, request: ValidRequest) -> AsyncIterator[InferEvent]:
        """Choose the replica (not one whose shard is lost, while another is up) and stream from it. The
        prompt is hashed once: the replica's scheduler gets the hashes the choice used
        (``ValidRequest.block_hashes``)."""
        request_id = next(self._ids)
        if request.decoder_input_details or not self.prefix_caching:  # NOTE: TGI: prefill logprobs: no cache
            hashes: list[int] = []
        else:
            hashes = block_hashes(request.namespace, request.input_ids, self.info.block_size)
            request = dataclasses.replace(request, block_hashes=tuple(hashes))
        down = [batcher.shard_lost() for batcher in self.replicas]
        replica = self.chooser.choose(request_id, request.namespace, request.input_ids, hashes, down)
        try:
            first = True
            async for event in self.replicas[replica].generate_stream(request):
                if first:
                    self.chooser.first_token(request_id)
                    first = False
                yield event
        finally:
            self.chooser.finished(request_id)

    async def health(self) -> bool:
        """Healthy when every replica is (a replica down would fail the requests routed to it)."""
        for batcher in self.replicas:
            if not await batcher.health():
                return False
        return True

    def start(self) -> None:
        for batcher in self.replicas:
            batcher.start()

    def begin_stop(self) -> None:
        for batcher in self.replicas:
            batcher.begin_stop()

    async def stop(self) -> None:
        for batcher in self.replicas:
            await batcher.stop()
