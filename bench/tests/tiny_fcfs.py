"""A minimal FCFS scheduler with an unbounded block-granular prefix cache, for testing the simulator without the
router's schedulers. Test-only: the benchmarks always run ``router_py.schedulers.make_scheduler``."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from router_py.scheduling import Admission, BatchPlan, SchedRequest


def _block_keys(ids: Sequence[int], block_size: int) -> list[int]:
    keys, h = [], 0
    for i in range(0, len(ids) - block_size + 1, block_size):
        h = hash((h, tuple(ids[i : i + block_size])))
        keys.append(h)
    return keys


class TinyFcfs:
    def __init__(self, num_blocks: int, block_size: int = 16) -> None:
        self.block_size = block_size
        self.waiting: deque[SchedRequest] = deque()
        self.active: dict[int, SchedRequest] = {}
        self.cached: set[int] = set()
        self.queried = self.hit = 0

    def enqueue(self, request: SchedRequest, now: float) -> None:
        self.waiting.append(request)

    def cancel(self, request_id: int) -> bool:
        for r in self.waiting:
            if r.id == request_id:
                self.waiting.remove(r)
                return True
        return False

    def _match(self, request: SchedRequest) -> int:
        n = 0
        for key in _block_keys(request.prompt_ids, self.block_size):
            if key not in self.cached:
                break
            n += self.block_size
        return min(n, request.input_length - 1)

    def next_batch(
        self, now: float, prefill_budget: int, token_budget: int, max_size: int | None = None, min_size: int = 0
    ) -> BatchPlan | None:
        admissions: list[Admission] = []
        used = 0
        while self.waiting and used < prefill_budget and (max_size is None or len(admissions) < max_size):
            req = self.waiting[0]
            if req.input_length + req.max_new_tokens > token_budget:
                break
            token_budget -= req.input_length + req.max_new_tokens
            cache_len = self._match(req)
            rest = req.input_length - cache_len
            chunk = None if used + rest <= prefill_budget else prefill_budget - used
            self.waiting.popleft()
            self.active[req.id] = req
            self.queried += req.input_length
            self.hit += cache_len
            admissions.append(Admission(req, (), (), cache_len, chunk))
            used += rest if chunk is None else chunk
        return BatchPlan(admissions, used, used, 0) if admissions else None

    def release(self, request_id: int) -> None:
        req = self.active.pop(request_id)
        self.cached.update(_block_keys(req.prompt_ids, self.block_size))

    def waiting_count(self) -> int:
        return len(self.waiting)

    def cache_stats(self) -> dict[str, int]:
        return {"prompt_tokens_queried": self.queried, "prompt_tokens_hit": self.hit}


def tiny_factory(config: str, num_blocks: int, block_size: int) -> TinyFcfs:
    return TinyFcfs(num_blocks, block_size)
