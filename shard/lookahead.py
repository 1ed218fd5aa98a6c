"""The next decode steps of the running batch, run while its last tokens travel to the router and back.

Without them the shard idles from answering one Decode until the next arrives: the router streams the tokens,
filters, schedules and sends the next RPC, and gRPC carries both ways (docs/performance.md, "Throughput: the
next decode step run ahead" and "Two steps ahead"). When every request of the stored batch is decoding and
none stopped at this step, the servicer starts the batch's next step at once (:meth:`Lookahead.maybe_start`),
and the worker thread running it goes on to the next step at once (a chain) until ``depth`` results wait to
be taken, a request stops or fails, or an RPC asks it to stop (:meth:`Lookahead.stop_soon`). A Decode of that
batch alone takes every step that is ready, merged per request (several tokens in one Generation, as TGI
carries speculated tokens), and waits only when none is (:meth:`Lookahead.next_ready`). Under load (a batch of
``BUSY_ROWS`` requests or more) it waits until ``answer_steps`` steps are ready (default 2, unless the chain
ends first: a stop, a failure, another RPC), so each answer carries two tokens per request: half the Decode
RPCs and half the router's per-step work, whose CPU the steps compete with for the cores (docs/performance.md,
"AMX tile linears and two tokens per answer under load"); the first token of each pair waits for the second,
one step. Below ``BUSY_ROWS`` a token never waits for a later one.

Why this changes nothing else the router sees: the shard decides stops (EOS, stop sequences,
max_new_tokens) and no step is chained after one where a request stopped or failed, so no token past a stop
is computed; a step's KV write is the KV of a token the shard already chose, at a slot the router allocated
to that request (it reserves prompt + max_new_tokens up front). Every other RPC touching the batch first
stops the chain and waits for its step (:meth:`Lookahead.settle`), so its writes are done before
FilterBatch/ClearCache answer and the router reuses the blocks of the requests they drop. FilterBatch keeps
the results of the requests it keeps; a Prefill merged into the batch (``cached_batch``) computes only the
new requests and answers with the batch's results from the steps run ahead. Each request's tokens are those
of the plain schedule.

``PRISM_LOOKAHEAD``: the depth (default 3; 0, ``off``: none; 1: one step, never two tokens in an answer).
``PRISM_ANSWER_STEPS``: the steps an answer waits for under load (default 2; 1: never waits for a second).
Off with KV tiers (their copies run before a step's forward) or tensor parallelism (every rank would have to
run ahead alike).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from shard.batch import RequestState, ShardBatch
from shard.generation import GenerationOut, merge_steps
from shard.model_runner import StepTimes

log = logging.getLogger(__name__)
ENV = "PRISM_LOOKAHEAD"
ANSWER_STEPS_ENV = "PRISM_ANSWER_STEPS"

StepResult = tuple[list[GenerationOut], StepTimes]
StepFn = Callable[[list[RequestState]], StepResult]
# NOTE: runs the callable on a worker thread holding the step lock, started before it returns; the awaitable it
# returns ends with the callable and releases the lock (None: the lock is taken, nothing started)
StartFn = Callable[[Callable[[], None]], Awaitable[Awaitable[None] | None]]


# NOTE: one more than DEFAULT_ANSWER_STEPS, so that the chain goes on while an answer of two steps travels
DEFAULT_DEPTH = 3
DEFAULT_ANSWER_STEPS = 2
BUSY_ROWS = 16  # a batch this large waits for answer_steps steps per answer (Lookahead.busy_rows)


def depth_from_env() -> int:
    """``PRISM_LOOKAHEAD``: a step count >= 0, or on/off words (unset or on: :data:`DEFAULT_DEPTH`)."""
    raw = os.environ.get(ENV, "").strip().lower()
    if raw in ("", "on", "true", "yes"):
        return DEFAULT_DEPTH
    if raw in ("off", "false", "no"):
        return 0
    if raw.isdigit():
        return int(raw)
    raise ValueError(f"{ENV}={raw!r}: expected a number of steps (0 = off) or on/off")


def answer_steps_from_env() -> int:
    """``PRISM_ANSWER_STEPS``: a step count >= 1 (unset: :data:`DEFAULT_ANSWER_STEPS`)."""
    raw = os.environ.get(ANSWER_STEPS_ENV, "").strip()
    if raw == "":
        return DEFAULT_ANSWER_STEPS
    if raw.isdigit() and int(raw) >= 1:
        return int(raw)
    raise ValueError(f"{ANSWER_STEPS_ENV}={raw!r}: expected a number of steps >= 1")


@dataclass
class AheadResult:
    """A batch's steps run ahead, merged: its generations (of the requests still in the batch) and times, or
    the exception a step raised (raised again by the RPC that takes it, as the step itself would have)."""

    generations: list[GenerationOut]
    times: StepTimes
    error: BaseException | None = None


class Lookahead:
    """At most one chain at a time (a single stored batch), stepping on one worker thread while it holds the
    step lock; results wait here, by batch id, in step order."""

    def __init__(self, start: StartFn, step: StepFn, depth: int, answer_steps: int = 1) -> None:
        self._start, self._step = start, step
        self.depth = depth  # 0: off
        self.answer_steps = answer_steps  # ready steps a Decode of a busy batch waits for
        self.busy_rows = BUSY_ROWS
        self._task: asyncio.Task | None = None
        self._task_batch = -1
        self._mutex = threading.Lock()  # the worker's and the loop's view of _ready and _stop
        self._stop = False  # end the chain after its current step
        self._ready: dict[int, list[AheadResult]] = {}
        self._waiter: asyncio.Future[None] | None = None  # next_ready's, done when a result is kept
        self.started = 0  # steps run ahead so far (for tests)

    async def maybe_start(
        self, batch: ShardBatch, generations: list[GenerationOut], stored_batches: int
    ) -> None:
        """Start ``batch``'s chain if it is the only stored batch, none runs, fewer than ``depth`` of its
        results wait, and at its latest step (the last result waiting, else this step's ``generations``)
        every request of it got a token, none stopped or failed (so all are decoding). Call once nothing more
        reads the requests' state for this step's answer but the fields of its CachedBatch: a step changes
        the rest."""
        if self.depth == 0 or stored_batches != 1 or self._task is not None:
            return
        with self._mutex:
            ready = self._ready.get(batch.id, [])
            if len(ready) >= self.depth or (ready and ready[-1].error is not None):
                return
            latest = ready[-1].generations if ready else generations
            self._stop = False
        if not _continues(batch, latest):
            return
        loop = asyncio.get_running_loop()
        running = await self._start(lambda: self._steps(loop, batch))
        if running is None:
            return
        self._task_batch = batch.id
        self._task = asyncio.ensure_future(self._end(running))

    def _steps(self, loop: asyncio.AbstractEventLoop, batch: ShardBatch) -> None:
        """The chain, on the worker thread: keep each step's result and go on at once unless told to stop, a
        request stopped or failed, or ``depth`` results wait."""
        requests = list(batch.requests)
        while True:
            try:
                result = AheadResult(*self._step(requests))
            except Exception as err:  # NOTE: kept and raised by the RPC that takes it
                log.warning("a step run ahead on batch %d failed: %r", batch.id, err)
                result = AheadResult([], StepTimes(), err)
            with self._mutex:
                ready = self._ready.setdefault(batch.id, [])
                ready.append(result)
                self.started += 1
                more = result.error is None and not self._stop and len(ready) < self.depth
            loop.call_soon_threadsafe(self._wake)
            if not more or not _continues(batch, result.generations):
                return

    async def _end(self, running: Awaitable[None]) -> None:
        try:
            await running
        finally:
            self._task = None
            self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def running(self, batch_id: int) -> bool:
        """A chain steps ``batch_id`` now."""
        return self._task is not None and self._task_batch == batch_id

    def stop_soon(self) -> None:
        """End the chain after its current step (another RPC waits for the step lock)."""
        with self._mutex:
            self._stop = True

    async def settle(self, batch_id: int | None = None) -> None:
        """Stop the chain on ``batch_id`` (None: on any batch) after its current step and wait for it; its
        results are then ready. A cancelled caller does not cancel the step (its KV writes must finish)."""
        task = self._task
        if task is None or (batch_id is not None and batch_id != self._task_batch):
            return
        self.stop_soon()
        await asyncio.wait({task})

    async def next_ready(self, batch_id: int, rows: int) -> AheadResult | None:
        """For a Decode of ``batch_id`` (``rows`` requests) alone: its ready steps, merged (:meth:`take`);
        while fewer are ready than it wants (one; ``answer_steps`` from ``busy_rows`` requests up) and its
        chain runs, waits. The chain goes on. None: nothing ran ahead."""
        want = self.answer_steps if rows >= self.busy_rows else 1
        while self._waiting(batch_id) < want and self.running(batch_id):
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)
        return self.take(batch_id)

    def _waiting(self, batch_id: int) -> int:
        with self._mutex:
            return len(self._ready.get(batch_id, ()))

    def take(self, batch_id: int) -> AheadResult | None:
        """The ready steps of ``batch_id`` (removed), merged into one result (:func:`merge_steps`); raises a
        step's exception if one failed."""
        with self._mutex:
            got = self._ready.pop(batch_id, None)
        if not got:
            return None
        for r in got:
            if r.error is not None:
                raise r.error
        times = StepTimes(sum(r.times.forward_ns for r in got), sum(r.times.decode_ns for r in got))
        return AheadResult(merge_steps([r.generations for r in got]), times)

    def filter(self, batch_id: int, kept: ShardBatch) -> None:
        """FilterBatch kept ``kept``: drop the ready results of the requests it removed (raises a step's
        exception if one failed: the batch's state is then unknown). Settle first."""
        got = self.take(batch_id)
        if got is None:
            return
        keep = set(kept.request_ids)
        got.generations = [g for g in got.generations if g.request_id in keep]
        with self._mutex:
            self._ready[kept.id] = [got]

    def drop(self, batch_id: int | None) -> None:
        """ClearCache: forget the ready results of ``batch_id`` (None: of every batch). Settle first."""
        with self._mutex:
            if batch_id is None:
                self._ready.clear()
            else:
                self._ready.pop(batch_id, None)


def _continues(batch: ShardBatch, generations: list[GenerationOut]) -> bool:
    """Every request of ``batch`` got a token and none stopped or failed: all are decoding."""
    ids = {g.request_id for g in generations if g.error is None and g.finished is None}
    return len(generations) == len(batch.requests) and ids == set(batch.request_ids)
