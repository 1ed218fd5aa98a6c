"""A Scheduler wrapper for batcher tests: delegates to a real scheduler and checks the batcher's side of the
contract on every call (no request admitted twice, every admitted request released exactly once, no block
handed to two live requests, block 0 never handed out)."""

from __future__ import annotations

from collections.abc import Sequence

from router_py.scheduling.interface import BatchPlan, SchedRequest, Scheduler


class RecordingScheduler:
    def __init__(self, inner: Scheduler) -> None:
        self.inner = inner
        self.enqueued: list[SchedRequest] = []
        self.plans: list[BatchPlan] = []
        self.live: dict[int, tuple[int, ...]] = {}  # admitted, not yet released: id -> blocks
        self.released: list[int] = []
        self.cancelled: list[int] = []

    def enqueue(self, request: SchedRequest, now: float) -> None:
        self.enqueued.append(request)
        self.inner.enqueue(request, now)

    def cancel(self, request_id: int) -> bool:
        done = self.inner.cancel(request_id)
        if done:
            self.cancelled.append(request_id)
        return done

    def next_batch(
        self, now: float, prefill_budget: int, token_budget: int, max_size: int | None = None, min_size: int = 0
    ) -> BatchPlan | None:
        plan = self.inner.next_batch(now, prefill_budget, token_budget, max_size=max_size, min_size=min_size)
        if plan is not None:
            self.plans.append(plan)
            for adm in plan.admissions:
                assert adm.request.id not in self.live, f"request {adm.request.id} admitted twice"
                assert 0 not in adm.blocks, "block 0 is reserved for the health probe"
                self.live[adm.request.id] = adm.blocks
        return plan

    def prefill_done(self, request_id: int) -> None:
        assert request_id in self.live, f"prefill_done of {request_id}, which is not admitted"
        self.inner.prefill_done(request_id)

    def release(
        self, request_id: int, computed: bool = True, computed_prefix: int = 0, generated: Sequence[int] = ()
    ) -> None:
        assert request_id in self.live, f"release of {request_id}, which is not admitted (or released twice)"
        del self.live[request_id]
        self.released.append(request_id)
        self.inner.release(request_id, computed, computed_prefix, generated)

    def waiting_count(self) -> int:
        return self.inner.waiting_count()

    def peek_prefix(self, namespace: str, hashes: Sequence[int]) -> int:
        return self.inner.peek_prefix(namespace, hashes)

    def cache_stats(self) -> dict[str, int]:
        return self.inner.cache_stats()
