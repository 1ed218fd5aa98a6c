"""The batcher's KV-tier wiring (router_py/engine/tier_link.py): copies ride on Prefill, failed ones
(reported by the shard, or all of them when the Prefill fails) go back to the scheduler, a prefetch Transfer
runs between steps and the next Prefill waits for it (a late prefetch), and the metrics count bytes per
direction."""

from __future__ import annotations

import asyncio

import pytest

from prism_cache.tiers.types import BlockCopy, Tier
from router_py.engine.tier_link import TierLink
from router_py.metrics import Metrics
from router_py.shard_client.client import ShardError
from router_py.shard_client.messages import StepResult

D, H, K = Tier.DEVICE, Tier.HOST, Tier.DISK
COPIES = [BlockCopy(D, 3, H, 0, 11), BlockCopy(H, 1, D, 4, 12), BlockCopy(K, 2, D, 5, 13)]


class Scheduler:
    def __init__(self, prefetch: list[BlockCopy] | None = None) -> None:
        self.failed: list[BlockCopy] = []
        self.prefetch = prefetch or []

    def copy_failed(self, copies: list[BlockCopy]) -> None:
        self.failed += copies

    def plan_prefetch(self, window: int) -> list[BlockCopy]:
        out, self.prefetch = self.prefetch, []
        return out


class Client:
    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.log: list[str] = []

    async def transfer(self, copies: list[BlockCopy]) -> tuple[int, ...]:
        self.log.append("transfer start")
        await self.gate.wait()
        self.log.append("transfer end")
        return (0,)


def link(scheduler: Scheduler, client: Client | None = None) -> tuple[TierLink, Metrics]:
    metrics = Metrics()
    tiers = TierLink(client or Client(), lambda: scheduler, metrics, 1000, enabled=True)  # type: ignore[arg-type]
    return tiers, metrics


async def test_copies_ride_on_the_step_and_failed_ones_go_back() -> None:
    sched = Scheduler()
    tiers, metrics = link(sched)
    sent = []

    async def prefill(copies):
        sent.append(list(copies))
        return StepResult((), None, kv_failed=(2,))

    await tiers.step(prefill, COPIES)
    assert sent == [COPIES] and sched.failed == [COPIES[2]]
    assert metrics.value("prism_kv_tier_bytes_moved", direction="device_to_host") == 1000
    assert metrics.value("prism_kv_tier_bytes_moved", direction="host_to_device") == 1000
    assert metrics.value("prism_kv_tier_failed_copies") == 1


@pytest.mark.parametrize("error", [ShardError("Prefill", "boom"), asyncio.CancelledError()])
async def test_a_failed_or_cancelled_prefill_reports_every_copy(error: BaseException) -> None:
    sched = Scheduler()
    tiers, _ = link(sched)

    async def prefill(copies):
        raise error

    with pytest.raises(type(error)):
        await tiers.step(prefill, COPIES)
    assert sched.failed == COPIES


def test_a_request_failed_before_its_prompt_was_published_is_rolled_back() -> None:
    """A Prefill that promoted a host-held prefix fails: the batcher reports its copies failed, then releases
    the request with computed=False. Nothing of its prompt is cached (its KV may be garbage), no pin is left,
    and the promotions stay counted as moves (they were sent). After prefill_done, a failure caches as usual."""
    from prism_cache.tiers.types import TierConfig
    from router_py.scheduling.interface import SchedRequest, SchedulerConfig
    from router_py.scheduling.registry import make_scheduler

    sched = make_scheduler(SchedulerConfig(num_blocks=7, block_size=2, tiers=TierConfig(8, 0)))
    prompt, others = [1, 2, 3, 4, 5, 6, 7, 8, 9], [[9, k] * 4 + [0] for k in range(3)]
    for i, ids in enumerate([prompt, *others]):  # the prompt is cached, then evicted down to the host
        sched.enqueue(SchedRequest(i, ids, 1, 0.0), 0.0)
        plan = sched.next_batch(0.0, 64, 64)
        assert plan is not None
        sched.release(i)
    alloc = sched.allocator
    assert alloc is not None and alloc.tiers is not None
    hashes = alloc.hashes("", tuple(prompt))
    on_device = alloc._tree.cached_prefix_blocks(hashes)
    sched.enqueue(SchedRequest(10, prompt, 1, 0.0), 0.0)
    plan = sched.next_batch(0.0, 64, 64)
    assert plan is not None
    promotions = [c for c in plan.copies if c.src_tier == Tier.HOST]
    assert promotions and plan.admissions[0].cache_len == 2 * (on_device + len(promotions))
    moved = dict(alloc.tiers.counters.moved)
    sched.copy_failed(plan.copies)  # TierLink.step, on the failed Prefill
    sched.release(10, computed=False)
    assert alloc.peek(hashes) == 2 * on_device and not alloc.tiers.pinned  # nothing of it cached
    assert dict(alloc.tiers.counters.moved) == moved
    alloc.check_integrity()
    sched.enqueue(SchedRequest(11, prompt, 1, 0.0), 0.0)
    assert sched.next_batch(0.0, 64, 64) is not None
    sched.prefill_done(11)
    sched.release(11, computed=False)  # failed while decoding: its prompt was computed and stays cached
    assert alloc.peek(hashes) == 8
    alloc.check_integrity()


async def test_the_next_prefill_waits_for_the_prefetch_in_flight() -> None:
    prefetch = [BlockCopy(K, 7, H, 2, 21)]
    sched, client = Scheduler(prefetch), Client()
    tiers, metrics = link(sched, client)
    tiers.prefetch()
    await asyncio.sleep(0)
    assert client.log == ["transfer start"]

    async def prefill(copies):
        client.log.append("prefill")
        return StepResult((), None)

    step = asyncio.create_task(tiers.step(prefill, []))
    await asyncio.sleep(0.01)
    assert client.log == ["transfer start"]  # the Prefill waits
    client.gate.set()
    await step
    assert client.log == ["transfer start", "transfer end", "prefill"]
    assert metrics.value("prism_kv_tier_late_prefetches") == 1
    assert sched.failed == prefetch  # the Transfer reported index 0 as failed


def test_tier_hit_metrics_split_the_total_and_default_to_device() -> None:
    tiers, metrics = link(Scheduler())
    tiers.record({"prompt_tokens_hit": 64})  # tiers off in the scheduler: every hit is a device hit
    assert metrics.value("prism_prefix_cache_tier_hit_tokens", tier="device") == 64
    tiers.record({"prompt_tokens_hit": 96, "tier_hit_tokens_device": 64, "tier_hit_tokens_host": 16,
                  "tier_hit_tokens_disk": 16, "prefetch_hits": 2})
    assert metrics.value("prism_prefix_cache_tier_hit_tokens", tier="host") == 16
    assert metrics.value("prism_kv_tier_prefetch_hits") == 2


def test_a_scheduler_with_tiers_reports_every_tier_key() -> None:
    from prism_cache.tiers.types import TierConfig
    from router_py.scheduling.interface import SchedulerConfig
    from router_py.scheduling.registry import make_scheduler

    config = SchedulerConfig(num_blocks=16, block_size=16, tiers=TierConfig(4, 8))
    stats = make_scheduler(config).cache_stats()
    for key in ("tier_hit_tokens_device", "tier_hit_tokens_host", "tier_hit_tokens_disk", "prefetch_blocks",
                "prefetch_hits", "tier_blocks_used_host", "tier_blocks_used_disk"):
        assert stats[key] == 0, key
    tiers, metrics = link(Scheduler())
    tiers.record(stats)
    assert metrics.value("prism_kv_tier_blocks", tier="disk") == 0


def test_with_tiers_off_only_the_device_series_moves_and_every_tier_shows() -> None:
    """The per-step fast path (tiers off): the device series follows the hit total, host and disk show 0, and
    a rebuilt scheduler's counters starting over do not move it back."""
    metrics = Metrics()
    tiers = TierLink(Client(), lambda: Scheduler(), metrics, 0, enabled=False)  # type: ignore[arg-type]
    text = metrics.render()
    assert all(f'prism_prefix_cache_tier_hit_tokens{{tier="{n}"}} 0' in text for n in ("device", "host", "disk"))
    for hit in (0, 32, 32, 80):
        tiers.record({"prompt_tokens_hit": hit})
    assert metrics.value("prism_prefix_cache_tier_hit_tokens", tier="device") == 80
    tiers.reset()
    tiers.record({"prompt_tokens_hit": 16})
    assert metrics.value("prism_prefix_cache_tier_hit_tokens", tier="device") == 96
    assert metrics.value("prism_prefix_cache_tier_hit_tokens", tier="host") == 0
    assert "prism_kv_tier_prefetch_hits" not in text
    assert "prism_kv_tier_prefetch_hits 0" in link(Scheduler())[1].render()  # NOTE: tiers on: shown at 0
