"""A discrete-event simulator of one chunking shard served by the router's real scheduler, on a virtual clock.

It runs the batching loop of :mod:`router_py.engine.batcher` (TGI's ``batching_task`` for chunking shards) one
forward pass at a time, with the same budgets and the same order of scheduler calls:

    idle:    plan = next_batch(now, max_batch_prefill_tokens, max_batch_total_tokens)
             forward(the plan's first chunks)                                       ─┐ Prefill(new)
    running: plan = next_batch(now, prefill_budget - current_tokens, total - max_tokens, max_size)
             forward(the plan's first chunks + every running request's next tokens) ─┤ Prefill(new, cached)
             forward(every running request's next tokens)                           ─┘ Decode
    after each forward: a request whose prompt completed gets its first token at ``now``; a request that
    reached its max_new_tokens is released to the scheduler (its blocks go to the prefix cache).

Arrivals are enqueued with their own time before each next_batch call; when nothing runs and nothing is
admitted the clock jumps to the next arrival. A running request's next tokens are its prompt's next piece
(``chunk_len`` first, then what the shard plans, :func:`proto.chunking.plan_continuing`) or one decode token, as
:mod:`shard.batch` computes them. Each forward lasts ``cost.step_seconds``; with KV tiers, a forward that
admits requests also loads their promoted blocks (:mod:`bench.tier_timing`: bandwidths, layer-wise overlap),
and the scheduler's queue-based prefetch plan is started on the disk channel at each arrival and before each
next_batch call. The scheduler is the one ``router_py.scheduling.registry.make_scheduler`` builds for the
server, so admissions, ``cache_len``, ``chunk_len`` and evictions are the server's own; only time is
simulated.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.cost_model import CostModel
from bench.metrics import RequestRecord
from bench.tier_timing import TierClock, TierTiming
from bench.workloads.request import WorkloadRequest
from bench.workloads.token_ids import prompt_token_ids
from proto.chunking import plan_continuing, prefill_len
from router_py.engine.budgets import admission_budgets
from prism_cache.tiers import BlockCopy
from router_py.scheduling.interface import Admission, BatchPlan, Scheduler, SchedRequest


@dataclass(frozen=True)
class SimConfig:
    max_batch_prefill_tokens: int = 8192  # per-step prefill budget (SGLang's chunked_prefill_size, 80 GB)
    max_batch_total_tokens: int | None = None  # None: the cost model's KV capacity
    max_batch_size: int | None = None
    block_size: int = 16  # a running request holds len(blocks) * block_size tokens of the token budget
    # Call the scheduler's ``prefill_done(id)`` when a prompt completes, so its blocks are shared before
    # the request finishes (as SGLang does, and as the server's batcher does). Off = TGI's behaviour:
    # blocks reach the tree at release only. Keep it equal to the batcher, or the two decide differently.
    prefill_done: bool = True
    tiers: TierTiming | None = None  # the cost of KV tier copies (None: no tiers, or copies cost nothing)
    prefetch_window: int = 0  # waiting requests whose disk blocks are prefetched to the host (PCR: 4)


@dataclass
class _Running:
    request: SchedRequest
    admitted: float
    computed: int  # prompt tokens whose KV exists (cached or computed so far)
    cached: int  # cache_len at admission: prompt tokens served by the prefix cache
    chunk: int | None  # prompt tokens of the next forward: chunk_len, then the shard's plan; None = the rest
    reserved: int  # tokens of the token budget it holds (its blocks; TGI's CachedBatch.max_tokens share)
    copies: Sequence[BlockCopy] = ()  # KV tier copies its first forward waits for
    generated: int = 0
    first_token: float | None = None

    @property
    def prefilling(self) -> bool:
        return self.computed < self.request.input_length

    @property
    def next_len(self) -> int:
        """Tokens the next forward computes for this request (the shard's rule, :mod:`proto.chunking`)."""
        if not self.prefilling:
            return 1
        return prefill_len(self.request.input_length, self.computed, self.chunk)

    @property
    def context(self) -> int:
        """Tokens already in KV before the next forward."""
        return self.computed + max(0, self.generated - 1)

    @property
    def finished(self) -> bool:
        return self.first_token is not None and self.generated >= self.request.max_new_tokens


@dataclass(frozen=True)
class SimResult:
    records: list[RequestRecord]
    cache_stats: dict[str, int]
    forwards: int

    @property
    def hit_rate(self) -> float:
        queried = self.cache_stats.get("prompt_tokens_queried", 0)
        return self.cache_stats.get("prompt_tokens_hit", 0) / queried if queried else 0.0


def sched_requests(workload: Sequence[WorkloadRequest]) -> list[SchedRequest]:
    """The workload as the scheduler sees it: ids in arrival order, token ids from segment ids."""
    ordered = sorted(workload, key=lambda r: r.arrival)
    return [
        SchedRequest(i, tuple(prompt_token_ids(r)), r.output_len, r.arrival) for i, r in enumerate(ordered)
    ]


class Simulator:
    """One replica. :meth:`run` serves a whole workload; a caller that decides arrivals as it goes (the
    data-parallel simulator, :mod:`bench.dp_sim`) uses :meth:`submit`, :meth:`advance` and :meth:`result`
    instead. ``on_first_token(id)`` and ``on_finish(id)`` are told, at the end of the forward that produced
    them, of each request's first token and of its end."""

    def __init__(
        self,
        scheduler: Scheduler,
        cost: CostModel,
        config: SimConfig = SimConfig(),
        on_plan: Callable[[BatchPlan], None] | None = None,
        on_first_token: Callable[[int], None] | None = None,
        on_finish: Callable[[int], None] | None = None,
    ) -> None:
        self.scheduler, self.cost, self.config, self.on_plan = scheduler, cost, config, on_plan
        self.on_first_token, self.on_finish = on_first_token, on_finish
        self.running: list[_Running] = []
        self.records: list[RequestRecord] = []
        self.pending: deque[SchedRequest] = deque()
        self.now = 0.0
        self.forwards = 0
        self.tier_clock = TierClock(config.tiers) if config.tiers is not None else None

    @property
    def token_capacity(self) -> int:
        return self.config.max_batch_total_tokens or self.cost.kv_capacity_tokens

    def run(self, requests: Sequence[SchedRequest]) -> SimResult:
        """Serve ``requests`` (arrival order) to completion; raises RuntimeError if some never fit."""
        self.pending = deque(requests)
        self.advance(float("inf"))
        return self.result()

    def submit(self, request: SchedRequest) -> None:
        """A request arrives (at ``request.arrival``, not before any submitted earlier)."""
        self.pending.append(request)

    def advance(self, until: float) -> None:
        """Run every loop turn that starts before ``until`` (the last forward may end after it), or until
        nothing is left to do. Raises RuntimeError if a waiting request can never fit."""
        while self.now < until and (self.pending or self.running or self.scheduler.waiting_count()):
            if self.running:
                self._admit(self.config.max_batch_prefill_tokens - self._current_tokens())
                if self.running:
                    self._forward([])
            elif not self._admit(self.config.max_batch_prefill_tokens):
                self._idle()

    def result(self) -> SimResult:
        return SimResult(self.records, dict(self.scheduler.cache_stats()), self.forwards)

    def _idle(self) -> None:
        if not self.pending:
            raise RuntimeError("waiting requests never fit in the KV cache")
        self.now = max(self.now, self.pending[0].arrival)
        self._enqueue_arrived()

    def _enqueue_arrived(self) -> None:
        while self.pending and self.pending[0].arrival <= self.now:
            req = self.pending.popleft()
            self.scheduler.enqueue(req, req.arrival)
            self._prefetch(req.arrival)

    def _prefetch(self, start: float) -> None:
        """Start the queue-based prefetch plan's disk reads at ``start`` (an arrival: a prefetch thread reacts
        to the queue, not to forward boundaries; or a next_batch call, when the window moves)."""
        window = self.config.prefetch_window
        if self.tier_clock is not None and window:
            plan = self.scheduler.plan_prefetch(window)  # type: ignore[attr-defined]
            self.tier_clock.prefetch(start, plan)

    def _current_tokens(self) -> int:
        """``CachedBatch.current_tokens``: the next forward of the running batch, as the shard plans it."""
        self._plan(self.running, [])
        return sum(r.next_len for r in self.running)

    def _plan(self, running: list[_Running], new: list[_Running]) -> None:
        """The shard's chunks for the running prompts in a forward that also admits ``new`` (every running
        request has been through a forward, so its prompt, if unfinished, continues)."""
        continuing = [r for r in running if r.prefilling]
        if not continuing:
            return
        fresh = {id(r) for r in new}
        fixed = sum(r.next_len for r in running + new if not r.prefilling or id(r) in fresh)
        rests = [r.request.input_length - r.computed for r in continuing]
        for r, chunk in zip(continuing, plan_continuing(fixed, rests, self.config.max_batch_prefill_tokens)):
            r.chunk = chunk

    def _admit(self, prefill_budget: int) -> bool:
        """One next_batch call as the batcher makes it; runs the (merged) prefill forward of a plan."""
        self._enqueue_arrived()
        if self.scheduler.waiting_count() == 0:
            return False
        budgets = admission_budgets(
            prefill_budget,
            self.token_capacity,
            sum(r.reserved for r in self.running),
            self.config.max_batch_size,
            len(self.running),
        )
        if budgets is None:
            return False
        self._prefetch(self.now)
        plan = self.scheduler.next_batch(self.now, budgets.prefill, budgets.tokens, max_size=budgets.max_size)
        if plan is None:
            return False
        if self.on_plan is not None:
            self.on_plan(plan)
        new = [self._running(a) for a in plan.admissions]
        self._forward(new)
        return True

    def _running(self, adm: Admission) -> _Running:
        req = adm.request
        reserved = len(adm.blocks) * self.config.block_size or req.input_length + req.max_new_tokens
        return _Running(req, self.now, adm.cache_len, adm.cache_len, adm.chunk_len, reserved, adm.copies)

    def _forward(self, new: list[_Running]) -> None:
        """One forward over the running requests and the ``new`` ones; then tokens, finishes and releases."""
        batch = self.running + new
        self._plan(self.running, new)
        chunks = [(r.next_len, r.computed) for r in batch if r.prefilling and r.next_len]
        decodes = [r.context for r in batch if not r.prefilling]
        step = self.cost.step_seconds(chunks, decodes)
        if self.tier_clock is not None and new:
            load = self.tier_clock.load(self.now, [c for r in new for c in r.copies])
            step = self.tier_clock.timing.step(step, load)
        self.now += step
        self.forwards += 1
        for r in batch:
            self._advance(r)
        self.running = [r for r in batch if not r.finished]
        for r in batch:
            if r.finished:
                self.scheduler.release(r.request.id)
                self.records.append(self._record(r))
                if self.on_finish is not None:
                    self.on_finish(r.request.id)

    def _advance(self, r: _Running) -> None:
        if not r.prefilling:
            r.generated += 1
            return
        r.computed += r.next_len
        r.chunk = None
        if not r.prefilling:
            r.first_token, r.generated = self.now, 1
            if self.config.prefill_done:
                self.scheduler.prefill_done(r.request.id)
            if self.on_first_token is not None:
                self.on_first_token(r.request.id)

    def _record(self, r: _Running) -> RequestRecord:
        req = r.request
        return RequestRecord(
            req.arrival, r.first_token, self.now, req.input_length, r.generated, r.admitted,
            cached_tokens=r.cached,
        )
