"""What every scheduler shares: the queue, the allocator, demand bookkeeping, TGI's admission loop, release.

A subclass chooses only the *order* in which waiting requests are offered to the admission loop (and which of
them form the planned batch that DART protects). Everything else is TGI's behaviour.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prism_cache import Allocation, CacheStats, PolicyConfig, RadixAllocator, block_hashes
from prism_cache.tiers import TIER_NAMES, BlockCopy, Tier
from router_py.scheduling.batch_builder import BatchBuilder, Built, Limits
from router_py.scheduling.lookahead import LookaheadWindow
from router_py.scheduling.waiting import Waiting, WaitingQueue
from router_py.scheduling.interface import BatchPlan, SchedRequest, SchedulerConfig


class QueueScheduler:
    """FCFS order by default (TGI); see :class:`router_py.scheduling.interface.Scheduler` for the contract."""

    name = "fcfs"

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.allocator: RadixAllocator | None = None
        if config.num_blocks is not None:
            self.allocator = RadixAllocator(
                config.num_blocks,
                config.block_size,
                PolicyConfig.parse(config.cache_policy, config.params),
                config.prefix_caching,
                observer=config.cache_observer,
                tiers=config.tiers,
            )
        self.queue = WaitingQueue()
        self.running: dict[int, tuple[Waiting, Allocation | None]] = {}
        self.stats = CacheStats()
        self.tier_hits = {t: 0 for t in Tier}  # hit tokens by the tier they came from (with tiers)
        self.builder = BatchBuilder(
            self.allocator, config.block_size, config.speculate, config.support_chunking
        )
        self.lookahead = LookaheadWindow.for_config(config, self.allocator)
        # NOTE: speculation writes rejected guesses' KV in the table: only the prompt is cached then
        self._caches_generated = config.cache_generated and not config.speculate

    # ---------------------------------------------------------------- queue
    def enqueue(self, request: SchedRequest, now: float) -> None:
        """Raises ValueError if the id is already waiting (nothing is recorded then)."""
        tokens = tuple(request.prompt_ids)
        uses_cache = self.allocator is not None and self.config.prefix_caching and request.use_prefix_cache
        hashes: list[int] = []
        if uses_cache and self.allocator is not None:
            known = request.block_hashes
            hashes = list(known) if known is not None else self.allocator.hashes(request.namespace, tokens)
        self.queue.push(request, tokens, hashes, uses_cache)
        if self.allocator is not None and hashes:
            self.allocator.enqueue(request.namespace, tokens, hashes, request.session, request.max_new_tokens)
        self._refresh_lookahead()

    def cancel(self, request_id: int) -> bool:
        entry = self.queue.pop(request_id)
        if entry is None:
            return False
        self._dequeued(entry)
        self._refresh_lookahead()
        return True

    def waiting_count(self) -> int:
        return len(self.queue)

    def peek_prefix(self, namespace: str, hashes: Sequence[int]) -> int:
        if self.allocator is None or not self.config.prefix_caching:
            return 0
        return self.allocator.peek(list(hashes))

    def _dequeued(self, entry: Waiting) -> None:
        if self.allocator is not None and entry.hashes:
            self.allocator.dequeue(entry.hashes)
        if self.lookahead is not None:
            self.lookahead.leave(entry)

    def _refresh_lookahead(self) -> None:
        if self.lookahead is not None:
            self.lookahead.refresh(self.queue)

    # ---------------------------------------------------------------- scheduling
    def next_batch(
        self,
        now: float,
        prefill_budget: int,
        token_budget: int,
        max_size: int | None = None,
        min_size: int = 0,
    ) -> BatchPlan | None:
        if not self.queue or len(self.queue) < min_size or max_size == 0:
            return None
        if prefill_budget <= 0 or token_budget <= 0:
            return None
        limits = Limits(prefill_budget, token_budget, max_size, min_size)
        order, planned = self._order(now, limits)
        built = self._build_protected(order, planned, limits)
        if built is None:
            return None
        self._commit(built, now)
        return BatchPlan(
            [adm for _, _, adm in built.admitted], built.prefill_tokens, built.max_tokens, built.max_blocks
        )

    def _build_protected(
        self, order: Iterable[Waiting], planned: list[Waiting], limits: Limits
    ) -> Built | None:
        """Run the admission loop with the planned batch's blocks counted as planned demand (DART protects
        them from the evictions this very batch triggers; counted only once it evicts, see
        :meth:`RadixAllocator.batch`)."""
        return self.builder.build(order, limits, [entry.hashes for entry in planned])

    def _commit(self, built: Built, now: float) -> None:
        for entry, alloc, adm in built.admitted:
            self.queue.pop(entry.request.id)
            self._dequeued(entry)
            self.running[entry.request.id] = (entry, alloc)
            if entry.uses_cache:
                self.stats.record(entry.request.namespace, entry.request.input_length, adm.cache_len)
                if alloc is not None and alloc.hit_tokens_by_tier:
                    self._count_tier_hits(alloc.hit_tokens_by_tier, adm.cache_len)
        self._on_admitted([e for e, _, _ in built.admitted], now)
        self._refresh_lookahead()

    def _count_tier_hits(self, by_tier: dict[Tier, int], cache_len: int) -> None:
        """Add a request's hits per tier, cut to its ``cache_len`` from the slowest tier up (the last prompt
        token is always computed)."""
        over = sum(by_tier.values()) - cache_len
        for tier in (Tier.DISK, Tier.HOST, Tier.DEVICE):
            cut = min(over, by_tier[tier])
            over -= cut
            self.tier_hits[tier] += by_tier[tier] - cut

    def plan_prefetch(self, window: int) -> list[BlockCopy]:
        """KV tier copies for the first ``window`` waiting requests (arrival order; PCR's queue-based
        prefetch, disk -> host) and any pending demotions: the caller sends them while the requests wait."""
        if self.allocator is None or self.allocator.tiers is None:
            return []
        return self.allocator.plan_prefetch([e.hashes for e in self.queue.head(window) if e.hashes])

    def copy_failed(self, copies: list[BlockCopy]) -> None:
        """The shard could not do these copies (a miss): the allocator forgets their blocks there."""
        if self.allocator is not None:
            for copy in copies:
                self.allocator.copy_failed(copy)

    def prefill_done(self, request_id: int) -> None:
        """See ``Scheduler.prefill_done``: the request's whole prompt has been prefilled (its
        first token came back), so its full prompt blocks are published to the tree now instead of at release,
        and waiting requests can reuse them at once (SGLang inserts at the same point). Never required for
        correctness; unknown ids are ignored."""
        item = self.running.get(request_id)
        if item is None:
            return
        entry, alloc = item
        if alloc is not None and self.allocator is not None and entry.hashes:
            self.allocator.cache_prompt(alloc, entry.tokens, entry.hashes)
        self._on_prefilled(entry)

    def release(
        self, request_id: int, computed: bool = True, computed_prefix: int = 0, generated: Sequence[int] = ()
    ) -> None:
        """See ``Scheduler.release``. Idempotent: an id that is not running is ignored."""
        item = self.running.pop(request_id, None)
        if item is None:
            return
        entry, alloc = item
        if alloc is not None and self.allocator is not None:
            bs = self.allocator.block_size
            if computed and entry.uses_cache and len(generated) > 1 and self._caches_generated:
                tokens = entry.tokens + tuple(generated[:-1])
                hashes = block_hashes(alloc.namespace, tokens, bs, entry.hashes)
                self.allocator.release(alloc, tokens if hashes else None, hashes)
            elif computed or alloc.published:
                self.allocator.release(alloc, entry.tokens if entry.hashes else None, entry.hashes)
            elif computed_prefix >= bs and entry.hashes:
                n = min(computed_prefix // bs, len(entry.hashes))
                self.allocator.release(alloc, entry.tokens[: n * bs], entry.hashes[:n])
            else:
                self.allocator.rollback(alloc, sent=True)
        self._on_prefilled(entry)

    # ---------------------------------------------------------------- hooks for subclasses
    def _order(self, now: float, limits: Limits) -> tuple[Iterable[Waiting], list[Waiting]]:
        """The order to offer waiting requests in, and the planned batch to protect. FCFS: arrival order,
        nothing planned (TGI)."""
        return iter(self.queue), []

    def _on_admitted(self, entries: list[Waiting], now: float) -> None:
        """Called once per batch with the admitted entries, in admission order."""

    def _on_prefilled(self, entry: Waiting) -> None:
        """Called when a running request's prompt is in the tree (prefill_done, or release at the latest)."""

    def cached_prefix(self, entry: Waiting) -> int:
        """``entry``'s cached prefix in tokens, recomputed only when the tree changed since the last call."""
        if self.allocator is None or not entry.hashes:
            return 0
        version = self.allocator.version
        if entry.peek_version != version:
            entry.peek = self.allocator.peek(entry.hashes)
            entry.peek_version = version
        return entry.peek

    # ---------------------------------------------------------------- metrics
    def cache_stats(self) -> dict[str, int]:
        stats = {
            "prompt_tokens_queried": self.stats.total.queried,
            "prompt_tokens_hit": self.stats.total.hit,
            "blocks_total": 0,
            "blocks_free": 0,
            "blocks_cached": 0,
            "blocks_in_use": 0,
            "evictions": 0,
        }
        if self.allocator is not None:
            sizes = self.allocator.sizes()
            stats["blocks_total"] = sizes.total
            stats["blocks_free"] = sizes.free
            stats["blocks_cached"] = sizes.cached
            stats["blocks_in_use"] = sizes.in_use
            stats["evictions"] = sizes.evicted
            if self.allocator.tiers is not None:
                for tier, tokens in self.tier_hits.items():
                    stats[f"tier_hit_tokens_{TIER_NAMES[tier]}"] = tokens
                counters = self.allocator.tiers.counters
                stats["prefetch_blocks"], stats["prefetch_hits"] = counters.prefetched, counters.prefetch_used
                for tier, pool in self.allocator.tiers.pools.items():
                    stats[f"tier_blocks_used_{TIER_NAMES[tier]}"] = pool.capacity - pool.free_count
        return stats
