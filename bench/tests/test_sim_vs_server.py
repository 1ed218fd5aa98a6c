"""The simulator and the server's batching loop make the same scheduling decisions for the same arrivals.

The router's real :class:`router_py.engine.batcher.Batcher` runs against an in-process fake shard that computes
exactly what ``shard.batch`` computes (chunk, rest of prompt, one decode token per step) and advances a
virtual clock by the same cost model as the simulator; both drive a fresh scheduler from ``make_scheduler``.
Every BatchPlan (ids, cache_len, chunk_len, blocks, slots) must be equal, in order. Two waves of arrivals: all
at t=0, then a second wave after the first has drained, so the second wave hits (and evicts from) the cache
the first one left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from bench import configs
from bench.cost_model import make_cost_model
from bench.simulator import SimConfig, Simulator, sched_requests
from bench.workloads.request import WorkloadRequest, with_arrivals
from bench.workloads.zipf_rag import ZipfRagParams, zipf_rag
from proto.chunking import plan_continuing
from router_py.engine.backend_config import BackendConfig
from router_py.engine.batcher import Batcher
from router_py.backend_api import BackendInfo, ChooserParams, StoppingParams, Token, ValidRequest
from router_py.metrics import Metrics
from router_py.scheduling.interface import BatchPlan, SchedRequest
from router_py.shard_client.messages import CachedBatch, GeneratedText, Generation, RequestBatch, StepResult

COST = make_cost_model("qwen3-4b-a800")
PREFILL_BUDGET = 1024
CAPACITY = 6144  # tokens: far less than the workload's distinct prefixes, so the cache evicts
BLOCK = 16
SECOND_WAVE = 1000.0


@dataclass
class _Req:
    id: int
    prompt_len: int
    max_new: int
    computed: int
    chunk: int | None
    blocks: int
    generated: int = 0
    stepped: bool = False  # through a forward: an unfinished prompt is then continued by the shard's plan

    @property
    def next_len(self) -> int:
        if self.computed >= self.prompt_len:
            return 1
        rest = self.prompt_len - self.computed
        return rest if self.chunk is None else min(self.chunk, rest)


@dataclass
class VirtualShard:
    """The ShardClient calls the batcher makes, with shard.batch's token bookkeeping, on a virtual clock."""

    now: float = 0.0
    batches: dict[int, list[_Req]] = field(default_factory=dict)

    def clock(self) -> float:
        return self.now

    async def prefill(
        self, batch: RequestBatch, cached: CachedBatch | None = None, copies: Sequence[object] = ()
    ) -> StepResult:
        new = [
            _Req(r.id, len(r.inputs.split()), r.max_new_tokens, r.cache_len, r.chunk_len, len(r.blocks))
            for r in batch.requests
        ]
        old = self.batches.pop(cached.id) if cached is not None else []
        batch_id = cached.id if cached is not None else batch.id
        self.batches[batch_id] = old + new
        return self._forward(batch_id)

    async def decode(self, batches: Sequence[CachedBatch], copies: Sequence[object] = ()) -> StepResult:
        merged = [r for b in batches for r in self.batches.pop(b.id)]
        self.batches[batches[0].id] = merged
        return self._forward(batches[0].id)

    async def filter_batch(self, batch_id: int, keep_ids: Sequence[int]) -> CachedBatch:
        keep = set(keep_ids)
        self.batches[batch_id] = [r for r in self.batches[batch_id] if r.id in keep]
        return self._cached(batch_id)

    async def clear_cache(self, batch_id: int | None = None) -> None:
        if batch_id is None:
            self.batches.clear()
        else:
            self.batches.pop(batch_id, None)

    @staticmethod
    def _plan(reqs: list[_Req]) -> None:
        """As ``shard.chunking.plan_chunks``: the shard schedules a prompt's later chunks under the budget."""
        continuing = [r for r in reqs if r.stepped and r.computed < r.prompt_len]
        fixed = sum(r.next_len for r in reqs if r not in continuing)
        rests = [r.prompt_len - r.computed for r in continuing]
        for r, chunk in zip(continuing, plan_continuing(fixed, rests, PREFILL_BUDGET)):
            r.chunk = chunk

    def _cached(self, batch_id: int) -> CachedBatch:
        reqs = self.batches[batch_id]
        self._plan(reqs)
        max_tokens = sum(r.blocks for r in reqs) * BLOCK  # shard.convert.cached_batch: blocks x block size
        return CachedBatch(batch_id, tuple(r.id for r in reqs), max_tokens, sum(r.next_len for r in reqs))

    def _forward(self, batch_id: int) -> StepResult:
        reqs = [r for r in self.batches[batch_id] if r.generated < r.max_new]
        self._plan(reqs)
        chunks = [(r.next_len, r.computed) for r in reqs if r.computed < r.prompt_len and r.next_len]
        decodes = [r.computed + r.generated - 1 for r in reqs if r.computed >= r.prompt_len]
        self.now += COST.step_seconds(chunks, decodes)
        return StepResult(tuple(g for r in reqs if (g := self._advance(r))), self._cached(batch_id))

    @staticmethod
    def _advance(r: _Req) -> Generation | None:
        r.stepped = True
        if r.computed < r.prompt_len:
            r.computed += r.next_len
            r.chunk = None
            if r.computed < r.prompt_len:
                return None
        r.generated += 1
        done = None
        if r.generated >= r.max_new:
            done = GeneratedText("x" * r.generated, r.generated, "length", None)
        return Generation(r.id, (Token(7, "x", -0.1),), generated_text=done)


def _workload() -> list[WorkloadRequest]:
    reqs = zipf_rag(ZipfRagParams(requests=40, corpus=20, top_k=3, system_prompts=2, system_len=128,
                                  passage_len=96, question_len=24, output_len=(2, 12), seed=7))
    return with_arrivals(reqs, [0.0] * 20 + [SECOND_WAVE] * 20)


def _key(plan: BatchPlan) -> list[tuple]:
    return [(a.request.id, a.cache_len, a.chunk_len, a.blocks, a.slots) for a in plan.admissions]


def _simulated(config: str, workload: list[WorkloadRequest]) -> tuple[list[list[tuple]], dict[str, int]]:
    plans: list[BatchPlan] = []
    sim = Simulator(configs.make(config, CAPACITY // BLOCK, BLOCK), COST,
                    SimConfig(PREFILL_BUDGET, CAPACITY, block_size=BLOCK), on_plan=plans.append)
    result = sim.run(sched_requests(workload))
    return [_key(p) for p in plans], result.cache_stats


async def _served(config: str, workload: list[WorkloadRequest]) -> list[list[tuple]]:
    shard, plans = VirtualShard(), []
    info = BackendInfo(4000, 4096, CAPACITY, BLOCK, False, "bfloat16", "cuda", True, True)
    batcher = Batcher(
        shard,  # type: ignore[arg-type]
        info,
        BackendConfig(max_batch_prefill_tokens=PREFILL_BUDGET),
        # NOTE: the simulator models prompt caching only (it releases without generated tokens)
        configs.make(config, CAPACITY // BLOCK, BLOCK, cache_generated=False),
        Metrics(4000, 4096),
        lambda text, special: [int(x) for x in text.split()],
        on_plan=plans.append,
        clock=shard.clock,
    )

    async def consume(r: SchedRequest) -> None:
        valid = ValidRequest(" ".join(map(str, r.prompt_ids)), tuple(r.prompt_ids), r.input_length,
                             ChooserParams(), StoppingParams(r.max_new_tokens))
        async for _ in batcher.generate_stream(valid):
            pass

    requests = sched_requests(workload)
    for wave_start in (0.0, SECOND_WAVE):
        shard.now = max(shard.now, wave_start)
        tasks = [asyncio.create_task(consume(r)) for r in requests if r.arrival == wave_start]
        await asyncio.sleep(0)  # every request of the wave is queued before the loop looks
        if batcher._task is None:
            batcher.start()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    await batcher.stop()
    return [_key(p) for p in plans]


@pytest.mark.parametrize("config", ["fcfs+lru", "lpm+lru", "qas+dart"])
def test_simulator_and_batcher_make_the_same_plans(config: str) -> None:
    workload = _workload()
    simulated, stats = _simulated(config, workload)
    served = asyncio.run(_served(config, workload))
    assert len(simulated) > 5 and any(a[2] is not None for p in simulated for a in p)  # chunking happened
    assert stats["evictions"] > 0
    assert any(a[1] > 0 for p in simulated[len(simulated) // 2 :] for a in p)  # the second wave hit the cache
    assert served == simulated
