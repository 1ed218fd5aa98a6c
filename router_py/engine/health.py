"""TGI's ``/health`` state machine (tgi-compat 3.7): while generations succeed a cheap Health RPC answers;
after any generation failure the next check runs a real one-token Prefill on the reserved block 0, and its
success makes the backend healthy again. While the shard is lost (:meth:`HealthCheck.mark_down`, until the
batcher has warmed a restarted shard up) every check fails at once, without an RPC."""

from __future__ import annotations

from router_py.backend_api import ChooserParams
from router_py.shard_client.client import ShardClient, ShardError
from router_py.shard_client.messages import U64_MAX, RequestBatch, ShardRequest

PROBE_BATCH = RequestBatch(
    id=U64_MAX,
    requests=(
        ShardRequest(
            id=U64_MAX, inputs="liveness", truncate=1, sampling=ChooserParams(), max_new_tokens=1,
            blocks=(0,), slots=(0,), add_special_tokens=False,
        ),
    ),
    max_tokens=2,
    max_blocks=1,
)


class HealthCheck:
    def __init__(self, client: ShardClient) -> None:
        self._client = client
        self.generation_healthy = True
        self.down = False

    def mark_failed(self) -> None:
        """A generation failed: the next check probes with a real Prefill."""
        self.generation_healthy = False

    def mark_down(self) -> None:
        """The shard is gone: unhealthy until :meth:`mark_up`."""
        self.down = True

    def mark_up(self) -> None:
        """A (restarted) shard passed the Warmup handshake."""
        self.down, self.generation_healthy = False, True

    async def check(self) -> bool:
        if self.down:
            return False
        if self.generation_healthy:
            return await self._ping()
        self.generation_healthy = await self._probe()
        return self.generation_healthy

    async def _ping(self) -> bool:
        try:
            await self._client.health()
        except ShardError:
            return False
        return True

    async def _probe(self) -> bool:
        try:
            result = await self._client.prefill(PROBE_BATCH)
            if result.batch is not None:
                await self._client.clear_cache(result.batch.id)
        except ShardError:
            return False
        return True
