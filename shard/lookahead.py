"""The next decode step of the running batch, run while its last tokens travel to the router and back.

Without it the shard idles from answering one Decode until the next arrives: the router streams the tokens,
filters, schedules and sends the next RPC, and gRPC carries both ways (docs/performance.md, "Throughput: the
next decode step run ahead", has the measurements). When every request of the stored batch is decoding and none stopped at this
step, the servicer starts the batch's next step at once (:meth:`Lookahead.maybe_start`); the next RPC on
that batch takes its result instead of stepping (:meth:`Lookahead.take`).

Why this changes nothing the router sees: the shard decides stops (EOS, stop sequences, max_new_tokens)
and a step is run ahead only when no request of the batch has stopped, so no token past a stop is
computed; a step's KV write is the KV of the last token the router already has, at a slot the router
allocated to that request. Every RPC touching the batch first waits for the step run ahead
(:meth:`Lookahead.settle`), so its writes are done before FilterBatch/ClearCache answer and the router
reuses the blocks of the requests they drop. FilterBatch keeps the results of the requests it keeps; a
Prefill merged into the batch (``cached_batch``) computes only the new requests and answers with the
batch's results from the step run ahead. Each request's tokens are those of the plain schedule, one
step per request per answer.

Off with ``PRISM_LOOKAHEAD=0``, and with KV tiers (their copies run before a step's forward) or tensor
parallelism (every rank would have to run ahead alike).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from shard.batch import RequestState, ShardBatch
from shard.generation import GenerationOut
from shard.model_runner import StepTimes

log = logging.getLogger(__name__)
ENV = "PRISM_LOOKAHEAD"

StepResult = tuple[list[GenerationOut], StepTimes]
# NOTE: starts the step before it returns (the worker thread runs at once); the awaitable it returns ends
# with the step's result (None: not started)
StartFn = Callable[[list[RequestState]], Awaitable[Awaitable[StepResult] | None]]


def enabled_by_env() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@dataclass
class AheadResult:
    """One batch's step run ahead: its generations (of the requests still in the batch) and times, or the
    exception the step raised (raised again by the RPC that takes it, as the step itself would have)."""

    generations: list[GenerationOut]
    times: StepTimes
    error: BaseException | None = None


class Lookahead:
    """At most one step run ahead at a time (a single stored batch); results wait here, by batch id."""

    def __init__(self, start: StartFn, enabled: bool) -> None:
        self._start, self.enabled = start, enabled
        self._task: asyncio.Task | None = None
        self._task_batch = -1
        self._ready: dict[int, AheadResult] = {}
        self.started = 0  # steps run ahead so far (for tests)

    async def maybe_start(
        self, batch: ShardBatch, generations: list[GenerationOut], stored_batches: int
    ) -> None:
        """Start ``batch``'s next step if it is the only stored batch and every request of it got a token at
        this step, none stopped or failed (so all are decoding). Call once nothing more reads the requests'
        state for this step's answer: the step run ahead changes it."""
        if not self.enabled or stored_batches != 1 or self._task is not None or batch.id in self._ready:
            return
        ids = {g.request_id for g in generations if g.error is None and g.finished is None}
        if len(generations) != len(batch.requests) or ids != set(batch.request_ids):
            return
        running = await self._start(list(batch.requests))
        if running is None:
            return
        self.started += 1
        self._task_batch = batch.id
        self._task = asyncio.ensure_future(running)

    async def settle(self, batch_id: int | None = None) -> None:
        """Wait until no step runs ahead on ``batch_id`` (None: on any batch); its result is then ready.
        A cancelled caller does not cancel the step (its KV writes must finish)."""
        task = self._task
        if task is None or (batch_id is not None and batch_id != self._task_batch):
            return
        await asyncio.wait({task})
        if self._task is not task:  # another caller settled it meanwhile
            return
        self._task = None
        try:
            generations, times = task.result()
            self._ready[self._task_batch] = AheadResult(generations, times)
        except BaseException as err:  # NOTE: kept and raised by the RPC that takes it
            log.warning("the step run ahead on batch %d failed: %r", self._task_batch, err)
            self._ready[self._task_batch] = AheadResult([], StepTimes(), err)

    def take(self, batch_id: int) -> AheadResult | None:
        """The settled result of ``batch_id`` (removed); raises the step's exception if it failed."""
        got = self._ready.pop(batch_id, None)
        if got is not None and got.error is not None:
            raise got.error
        return got

    def filter(self, batch_id: int, kept: ShardBatch) -> None:
        """FilterBatch kept ``kept``: drop the settled results of the requests it removed (raises the step's
        exception if it failed: the batch's state is then unknown)."""
        got = self.take(batch_id)
        if got is None:
            return
        keep = set(kept.request_ids)
        got.generations = [g for g in got.generations if g.request_id in keep]
        self._ready[kept.id] = got

    def drop(self, batch_id: int | None) -> None:
        """ClearCache: forget the settled results of ``batch_id`` (None: of every batch). Settle first."""
        if batch_id is None:
            self._ready.clear()
        else:
            self._ready.pop(batch_id, None)
