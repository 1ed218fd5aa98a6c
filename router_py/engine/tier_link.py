"""The batcher's side of the KV tiers (docs/kv-tiers-wire.md): send the allocator's copies with each Prefill,
prefetch for waiting requests with KvTierService.Transfer between steps, report failed copies back to the
scheduler (the blocks become misses, so the requests recompute), and count the tier metrics.

Ordering: at most one Transfer is in flight, and the next Prefill waits for it (a *late prefetch*): the
Prefill's promotions may read what the prefetch brought up, and its forward may write device blocks whose
demotion the prefetch carried. A Prefill that fails or is cancelled after its copies were taken reports all
of them as failed: the shard may have done none, some or all, so none may be trusted; the batcher then rolls
its requests' allocations back (``Scheduler.release(computed=False)``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from prism_cache.tiers.types import TIER_NAMES, BlockCopy
from router_py.metrics import Metrics
from router_py.scheduling.interface import Scheduler
from router_py.shard_client.client import ShardClient, ShardError
from router_py.shard_client.messages import StepResult

log = logging.getLogger(__name__)
PREFETCH_WINDOW = 8  # waiting requests, in queue order, whose tier-held prefixes are prefetched
TIER_HITS = "prism_prefix_cache_tier_hit_tokens"
PREFETCHED, PREFETCH_HITS = "prism_kv_tier_prefetched_blocks", "prism_kv_tier_prefetch_hits"


class TierLink:
    """``scheduler``: returns the batcher's current scheduler (it is rebuilt after a shard restart).
    ``enabled``: the shard has a host or disk tier (the scheduler then has tiers too)."""

    def __init__(self, client: ShardClient, scheduler: Callable[[], Scheduler], metrics: Metrics,
                 block_bytes: int, enabled: bool) -> None:
        self._client, self._scheduler, self._metrics = client, scheduler, metrics
        self._block_bytes, self.enabled = block_bytes, enabled
        self._prefetch: asyncio.Task[None] | None = None
        self._seen: dict[str, int] = {}
        # NOTE: every series shows from the start, 0 until it moves; the device hits advance every step
        hits = {name: metrics.counter(TIER_HITS, tier=name) for name in TIER_NAMES.values()}
        self._device_hits = hits["device"]
        if enabled:
            metrics.counter(PREFETCHED)
            metrics.counter(PREFETCH_HITS)
        self._device_seen = 0

    # ---- Prefill / Decode copies -------------------------------------------------------------------------

    async def step(self, call: Callable[[Sequence[BlockCopy]], Awaitable[StepResult]],
                   copies: Sequence[BlockCopy]) -> StepResult:
        """Run ``call(copies)`` (a Prefill carrying ``copies``) after any prefetch in flight, then report the
        copies that failed. Raises ShardError or CancelledError as the call does (after reporting every
        copy)."""
        if self._prefetch is not None and not self._prefetch.done():
            self._metrics.inc("prism_kv_tier_late_prefetches")
            await asyncio.shield(self._prefetch)
        owner = self._scheduler()
        try:
            result = await call(copies)
        except (ShardError, asyncio.CancelledError):
            self._done(owner, copies, range(len(copies)))
            raise
        self._done(owner, copies, result.kv_failed)
        return result

    # ---- prefetch ----------------------------------------------------------------------------------------

    def prefetch(self) -> None:
        """Start a Transfer of the scheduler's prefetch copies unless one is in flight (between steps)."""
        if not self.enabled or (self._prefetch is not None and not self._prefetch.done()):
            return
        owner = self._scheduler()
        plan = getattr(owner, "plan_prefetch", None)
        copies = plan(PREFETCH_WINDOW) if plan is not None else []
        if copies:
            self._prefetch = asyncio.get_running_loop().create_task(self._transfer(owner, copies))

    async def _transfer(self, owner: Scheduler, copies: list[BlockCopy]) -> None:
        try:
            failed: Sequence[int] = await self._client.transfer(copies)
        except ShardError as e:
            log.warning("prefetch Transfer failed (%s); its %d copies count as misses", e, len(copies))
            failed = range(len(copies))
        self._done(owner, copies, failed)

    # ---- accounting --------------------------------------------------------------------------------------

    def _done(self, owner: Scheduler, copies: Sequence[BlockCopy], failed: Sequence[int]) -> None:
        if not copies:
            return
        bad = set(failed)
        if bad and owner is self._scheduler():  # NOTE: a rebuilt scheduler never saw these copies
            owner.copy_failed([copies[i] for i in sorted(bad)])  # type: ignore[attr-defined]
        for i, c in enumerate(copies):
            if i in bad:
                self._metrics.inc("prism_kv_tier_failed_copies")
                continue
            direction = f"{TIER_NAMES[c.src_tier]}_to_{TIER_NAMES[c.dst_tier]}"
            self._metrics.inc("prism_kv_tier_bytes_moved", self._block_bytes, direction=direction)

    def record(self, stats: dict[str, int]) -> None:
        """Tier counters from ``Scheduler.cache_stats`` (counters advance by the change since the last call):
        ``prism_prefix_cache_tier_hit_tokens{tier}`` (their sum is ``prism_prefix_cache_hit_tokens``) and the
        prefetch counters. Called every step: with tiers off only the device series can move, so only it is
        looked at (near zero work)."""
        if not self.enabled:  # NOTE: every hit is a device hit
            hit = stats.get("prompt_tokens_hit", 0)
            if hit != self._device_seen:
                self._device_hits(hit - self._device_seen)
                self._device_seen = hit
            return
        if "tier_hit_tokens_device" not in stats:  # NOTE: a scheduler without tiers: every hit is a device hit
            stats = {**stats, "tier_hit_tokens_device": stats.get("prompt_tokens_hit", 0)}
        series = [(f"tier_hit_tokens_{n}", TIER_HITS, {"tier": n}) for n in TIER_NAMES.values()]
        if self.enabled:
            series += [("prefetch_blocks", PREFETCHED, {}), ("prefetch_hits", PREFETCH_HITS, {})]
        for key, metric, labels in series:
            self._advance(key, stats.get(key, 0), metric, **labels)
        for name in ("host", "disk"):
            if f"tier_blocks_used_{name}" in stats:
                self._metrics.set("prism_kv_tier_blocks", stats[f"tier_blocks_used_{name}"], tier=name)

    def _advance(self, key: str, value: int, metric: str, **labels: str) -> None:
        """Counter ``metric`` advanced by ``value``'s change since the last call for ``key``."""
        delta = value - self._seen.get(key, 0)
        if delta:
            self._metrics.inc(metric, delta, **labels)
            self._seen[key] = value

    def reset(self) -> None:
        """The scheduler was rebuilt (its counters start over)."""
        self._seen, self._device_seen = {}, 0
