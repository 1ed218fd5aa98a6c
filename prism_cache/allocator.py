"""The prefix cache as the schedulers see it: TGI's radix allocator (tgi-compat 2.2) over a :class:`BlockPool`
and a :class:`RadixTree`, plus the demand the retention policy reads. The co-design boundary: schedulers use
only the public methods below; the pool, the tree and the demand tables are private.

    enqueue / dequeue          a request's prompt enters / leaves the queue (queued demand, popularity)
    lookahead_enter / _leave   ... enters / leaves the look-ahead window (look-ahead demand, refresh)
    peek, version              the cached prefix of a waiting request (and when to recompute it)
    batch(planned)             one batch's allocations; the planned batch protected from its evictions

    allocate(tokens, prompt)   match -> touch -> lock -> take ceil((tokens - prefix_len) / bs) fresh blocks,
                               evicting by the retention policy if short; all or nothing
    release(allocation, ...)   insert the prompt's full blocks, unlock, drop the allocation's references
                               (duplicates and decode blocks return to the free list)
    rollback(allocation, sent) unlock and drop references, inserting nothing (allocation never half-done);
                               sent: its Prefill failed or was cancelled after its tier copies left

Block table of one allocation (bs = block size, P = prefix_len, T = tokens reserved):

    | matched blocks (tree's, referenced) | fresh blocks (this request's)             |
    | 0 .............................. P  | P ................................ ceil(T/bs)*bs
    slots = every token position of the table, cut at exactly T

With ``prefix_caching=False`` nothing is matched or inserted (TGI's SimpleAllocator, same block order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from prism_cache.block_pool import BlockPool
from prism_cache.demand import Demand
from prism_cache.hashing import block_hashes
from prism_cache.node import Node, Tokens
from prism_cache.observer import CacheObserver
from prism_cache.policies import PolicyConfig, make_policy
from prism_cache.popularity import SegmentPopularity
from prism_cache.radix_tree import RadixTree
from prism_cache.session_return import SessionReturn
from prism_cache.tiers.manager import Found, Pending, TierManager, Undo
from prism_cache.tiers.types import BlockCopy, Tier, TierConfig


@dataclass
class Allocation:
    """blocks: the lifetime block table; slots: ``tokens`` slot ids; prefix_len: tokens of the table already
    cached (a multiple of the block size, at most the prompt's full blocks); node: the locked path's deepest
    node (the namespace root on a miss), or None without a prompt; depth: blocks on that path. node and depth
    move deeper when :meth:`RadixAllocator.cache_prompt` publishes the prompt early.

    With tiers (TIERS-CONTRACT.md): ``copies`` for the shard to run in order before the forward that uses the
    blocks (demotions this allocation's evictions forced, then promotions of the matched host/disk blocks into
    the table's blocks ``depth ..``, which ``prefix_len`` counts); ``hit_tokens_by_tier``: ``prefix_len``
    split by where the blocks came from."""

    namespace: str
    blocks: tuple[int, ...]
    slots: tuple[int, ...]
    prefix_len: int
    node: Node | None
    depth: int = 0
    copies: list[BlockCopy] = field(default_factory=list)
    hit_tokens_by_tier: dict[Tier, int] = field(default_factory=dict)
    published: bool = False  # cache_prompt put the prompt in the tree (its KV was computed)
    _found: list[Found] = field(default_factory=list, repr=False)  # promoted blocks, pinned until inserted
    _pending: list[Pending] = field(default_factory=list, repr=False)  # demotions taken, put back on rollback
    _undo: list[Undo] = field(default_factory=list, repr=False)  # the promotions' uses, undone on rollback


@dataclass(frozen=True)
class CacheSizes:
    """Blocks by state: ``total`` usable = ``free`` + ``cached`` (in the tree) + ``in_use`` (held only by
    requests); ``evicted``: blocks evicted so far."""

    total: int
    free: int
    cached: int
    in_use: int
    evicted: int


class RadixAllocator:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        policy: PolicyConfig | str = "lru",
        prefix_caching: bool = True,
        params: Mapping[str, float] | None = None,
        observer: CacheObserver | None = None,
        tiers: TierConfig | None = None,
    ) -> None:
        """Args: policy: a typed :class:`PolicyConfig`, or a policy name whose knobs ``params`` holds (flat
        ``--scheduler-param`` keys); observer: told of every block the tree stores and evicts, and of every
        block copy the tiers take or give up (:class:`CacheObserver`); tiers: host/disk tiers below the
        device (None or both sizes 0: off; also off without prefix caching). Raises ValueError for an unknown
        policy or a bad knob."""
        config = policy if isinstance(policy, PolicyConfig) else PolicyConfig.parse(policy, params)
        self._pool = BlockPool(num_blocks)
        half_life = config.dart.heat_half_life
        self._tree = RadixTree(self._pool, block_size, half_life, observer)
        popularity = None
        if config.uses_popularity:
            capacity = self._pool.usable_blocks
            popularity = SegmentPopularity(capacity, half_life, block_size, self._kept_positions)
        sessions = None
        if config.uses_sessions:
            sessions = SessionReturn(self._pool.usable_blocks, half_life, self._kept_positions)
        self._demand = Demand(popularity, sessions)
        self._cached: set[int] = set()  # the cached positions at tree version _cached_at (_kept_positions)
        self._cached_at = -1
        self._policy = make_policy(config, self._demand)
        self.uses_lookahead = config.uses_lookahead  # the policy reads look-ahead demand (keep a window)
        # NOTE: count of waiting requests covering a block hash, as a bound dict lookup ``(h, 0)``: QAS reads
        # it in a binary search per waiting request
        self.queued_demand: Callable[[int, int], int] = self._demand.queued.get
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        # NOTE: each block's slot ids, built on first use and shared by every table that holds the block, so a
        # request's slots are one list extension per block instead of a Python loop over its tokens.
        self._block_slots: list[tuple[int, ...] | None] = [None] * num_blocks
        self._plan: list[list[int]] = []  # the batch's planned demand, until its first eviction counts it
        self._counted: list[list[int]] = []  # ... and once counted, until the batch ends
        self._plan_alone = False  # the planned table held nothing else when the plan was counted
        self._batches = 0
        self.tiers: TierManager | None = None
        if tiers is not None and tiers.enabled and prefix_caching:
            self.tiers = TierManager(tiers, self.queued_demand, self._tree.heat_now, block_size=block_size)
            self._tree.spill = self.tiers.evicted
            self.tiers.index.watch(observer)  # NOTE: tier copies are KV cache events too (medium CPU, DISK)

    def hashes(self, namespace: str, prompt: Tokens) -> list[int]:
        return block_hashes(namespace, prompt, self.block_size)

    def _kept_positions(self) -> set[int]:
        """Positions whose popularity and session records must stay: cached or waiting; asked as a prune
        starts. NOTE: the cached ones are O(cache) to list (RadixTree.cached_hashes), so they are listed once
        per tree version: both tables' prunes may start in the same enqueue."""
        if self._cached_at != self._tree.version:
            self._cached, self._cached_at = self._tree.cached_hashes(), self._tree.version
        return self._cached.union(self._demand.queued)

    # ---------------------------------------------------------------- the queue's demand
    def enqueue(
        self, namespace: str, prompt: Tokens, hashes: list[int], session: str | None = None, max_new: int = 0
    ) -> None:
        """A request with these :meth:`hashes` entered the queue: count its queued demand, popularity and
        session (``session``: the id it named, if any; ``max_new``: the tokens it may generate). NOTE: the
        queued table tells the eviction heap of ``hashes``, which session return does not repeat
        (``SessionReturn.observe``): keep them together."""
        self._demand.queued.add(hashes)
        self.observe(namespace, prompt, hashes)
        if self._demand.sessions is not None:
            name = f"{namespace}\x00{session}" if session else None
            self._demand.sessions.observe(hashes, name, self._tree.heat_now(), max_new)

    def dequeue(self, hashes: list[int]) -> None:
        """A request left the queue (admitted or cancelled). Raises ValueError if it was never enqueued."""
        self._demand.queued.remove(hashes)

    def observe(self, namespace: str, prompt: Tokens, hashes: list[int]) -> None:
        """A request entered the queue: count its blocks' popularity (only where the policy reads it)."""
        if self._demand.popularity is not None:
            self._demand.popularity.observe(namespace, prompt, hashes)

    def lookahead_enter(self, namespace: str, prompt: Tokens, hashes: list[int]) -> None:
        """A waiting request entered the look-ahead window: count its look-ahead demand and refresh (touch)
        its cached path (PCR)."""
        self._demand.lookahead.add(hashes)
        node, _ = self._tree.match(namespace, prompt)
        self._tree.touch(node)

    def lookahead_leave(self, hashes: list[int]) -> None:
        self._demand.lookahead.remove(hashes)

    # ---------------------------------------------------------------- lookups
    @property
    def version(self) -> int:
        """Changes whenever blocks enter or leave the tree: a :meth:`peek` stays valid while it does not."""
        return self._tree.version

    def peek_node(self, namespace: str, prompt: Tokens) -> Node | None:
        """The deepest cached node ``prompt`` reaches (None on a miss), touching nothing; a handle for walking
        the tree's shape (``parent``, ``children``), never for changing it."""
        return self._tree.peek(namespace, prompt)[0]

    def sizes(self) -> CacheSizes:
        pool, tree = self._pool, self._tree
        cached = tree.cached_blocks
        return CacheSizes(
            pool.usable_blocks, pool.free_count, cached, pool.usable_blocks - pool.free_count - cached,
            tree.evicted_blocks,
        )

    def peek(self, hashes: list[int]) -> int:
        """Cached prefix in tokens of the prompt with these :meth:`hashes`, touching nothing (0 with prefix
        caching off), on the device and, with tiers, below it; O(depth + log blocks), for ranking only (see
        :meth:`RadixTree.cached_prefix_blocks`)."""
        if not self.prefix_caching:
            return 0
        n = self._tree.cached_prefix_blocks(hashes)
        if self.tiers is not None:
            n += self.tiers.index.prefix_run(hashes, n, len(hashes))  # what it would reuse from below
        return n * self.block_size

    def allocate(
        self, tokens: int, namespace: str = "", prompt: Tokens | None = None, hashes: list[int] | None = None
    ) -> Allocation | None:
        """Reserve ``tokens`` slots, reusing the cached prefix of ``prompt`` (None: match nothing) on the
        device and, with tiers, its continuation below (``hashes``: the prompt's :meth:`hashes`, if known).

        Returns None, with nothing held, when the free blocks plus what can be evicted fall short; the match's
        recency stamp stays (as in TGI). On success the matched path is locked until release/rollback.
        """
        node: Node | None = None
        prefix: list[int] = []
        found: list[Found] = []
        if prompt is not None and self.prefix_caching:
            node, prefix = self._tree.match(namespace, prompt)
            self._tree.touch(node)
            self._tree.lock(node)
            if self.tiers is not None:
                hashes = hashes if hashes is not None else self.hashes(namespace, prompt)
                found = self.tiers.find(hashes, len(prefix), len(hashes))
                self.tiers.pin(found)
                self.tiers.served(hashes[: len(prefix)])
        bs = self.block_size
        need = max(0, -(-tokens // bs) - len(prefix))
        short = need - self._pool.free_count
        if short > 0:
            if self._plan:
                self._count_plan()
            self._tree.evict(short, self._policy)
        fresh = self._pool.allocate(need)
        if fresh is None:
            if node is not None:
                self._tree.unlock(node)
            if found:
                self.tiers.unpin(found)  # type: ignore[union-attr]
            return None
        self._pool.ref_all(prefix)
        blocks = tuple(prefix + fresh)
        alloc = Allocation(
            namespace, blocks, self._slots(blocks, tokens), (len(prefix) + len(found)) * bs, node, len(prefix)
        )
        if self.tiers is not None:
            self._tier_copies(alloc, found, fresh)
        return alloc

    def _tier_copies(self, alloc: Allocation, found: list[Found], fresh: list[int]) -> None:
        """The allocation's copies: the pending demotions, then ``found``'s promotions into ``fresh``."""
        assert self.tiers is not None
        alloc._pending = self.tiers.take_pending()
        alloc._found = found
        promotions, alloc._undo = self.tiers.promoted(found, fresh)
        alloc.copies = [c for _, c in alloc._pending] + promotions
        by_tier = {t: 0 for t in Tier}
        by_tier[Tier.DEVICE] = alloc.depth * self.block_size
        for tier, _, _ in found:
            by_tier[tier] += self.block_size
        alloc.hit_tokens_by_tier = by_tier

    def _slots(self, blocks: tuple[int, ...], tokens: int) -> tuple[int, ...]:
        """Every slot of ``blocks`` in order, cut at ``tokens`` (TGI: ``block * bs + i``)."""
        table, bs = self._block_slots, self.block_size
        slots: list[int] = []
        for b in blocks:
            ids = table[b]
            if ids is None:
                ids = table[b] = tuple(range(b * bs, b * bs + bs))
            slots += ids  # NOTE: memcpy-like; chain.from_iterable goes element by element
        del slots[tokens:]
        return tuple(slots)

    def release(self, alloc: Allocation, prompt: Tokens | None, hashes: list[int] | None = None) -> None:
        """A request ended: cache its prompt's full blocks (if ``prompt`` and prefix caching), unlock its match,
        drop its references. ``hashes``: the prompt's :func:`block_hashes` if the caller has them."""
        if prompt is not None and self.prefix_caching:
            self._insert_prompt(alloc, prompt, hashes)
        self._let_go(alloc)

    def cache_prompt(self, alloc: Allocation, prompt: Tokens, hashes: list[int]) -> None:
        """The prompt's KV is computed (prefill done): publish its full blocks now so waiting requests can reuse
        them, and move the allocation's lock to the new path (its blocks stay pinned until release)."""
        if not self.prefix_caching:
            return
        old = alloc.node
        node, depth = self._insert_prompt(alloc, prompt, hashes)
        self._tree.lock(node)
        if old is not None:
            self._tree.unlock(old)
        alloc.node, alloc.depth, alloc.published = node, depth, True

    def _insert_prompt(self, alloc: Allocation, prompt: Tokens, hashes: list[int] | None) -> tuple[Node, int]:
        """Insert the prompt's full blocks, walking from the allocation's locked node; returns the path end."""
        n_full = min(len(prompt) // self.block_size, len(alloc.blocks))
        if hashes is None:
            hashes = self.hashes(alloc.namespace, prompt)
        start = (alloc.node, alloc.depth) if alloc.node is not None and alloc.depth <= n_full else None
        existing, node = self._tree.insert(
            alloc.namespace,
            prompt[: n_full * self.block_size],
            list(alloc.blocks[:n_full]),
            hashes[:n_full],
            start,
        )
        if self.tiers is not None:
            if alloc._found:
                self._carry_uses(alloc, prompt, n_full)
            self._unpin(alloc)
            self.tiers.stored(alloc.blocks[existing:n_full], hashes[existing:n_full])
        return node, n_full

    def _carry_uses(self, alloc: Allocation, prompt: Tokens, n_full: int) -> None:
        """The blocks the allocation promoted keep their use count in the tree, as :meth:`promote_hot`'s do:
        the tree's new node starts at no hits and an exclusive tier is about to drop its copies, so without
        this a hot prefix would look used once at its next demotion (below HotPrefix's admission)."""
        assert self.tiers is not None
        hits = self.tiers.carried_hits(alloc._found)
        end = min(alloc.depth + len(alloc._found), n_full)  # the promoted run, from the device match on
        if end > alloc.depth and any(hits.values()):
            self._tree.raise_hits(alloc.namespace, prompt[: end * self.block_size], hits)

    def rollback(self, alloc: Allocation, sent: bool = False) -> None:
        """Undo :meth:`allocate` without caching anything: the tier accounting returns to what it was, but for
        what the copies did. ``sent=False``: the copies never left (the batch was undone): its demotions go back
        to the queue in order and its promotions are no moves. ``sent=True``: its Prefill failed or was
        cancelled after the copies were sent, each failed one reported with :meth:`copy_failed` (the batcher
        reports all of them): they stay moves, and the blocks the forward may not have written are cached
        nowhere. Either way the promoted blocks are unpinned and keep their hotness and prefetched mark."""
        if self.tiers is not None:
            if not sent:
                self.tiers.put_back(alloc._pending)
            self.tiers.unpromoted(alloc._undo, sent)
            alloc._pending, alloc._undo, alloc.copies = [], [], []
        self._let_go(alloc)

    def _let_go(self, alloc: Allocation) -> None:
        if alloc.node is not None:
            self._tree.unlock(alloc.node)
        self._pool.unref_all(alloc.blocks)
        if self.tiers is not None:
            self._unpin(alloc)

    def _unpin(self, alloc: Allocation) -> None:
        if alloc._found:
            self.tiers.unpin(alloc._found)  # type: ignore[union-attr]
            alloc._found = []

    # ---------------------------------------------------------------- tiers
    def plan_prefetch(self, waiting: Sequence[list[int]]) -> list[BlockCopy]:
        """Copies that bring the tier-held blocks of these waiting requests (their :meth:`hashes`, in queue
        order, the caller's prefetch window) closer (disk -> host), after any pending demotions; [] without
        tiers. The router sends them (KvTierService.Transfer) while the requests wait."""
        if self.tiers is None:
            return []
        tree = self._tree
        return self.tiers.plan_prefetch([(h, tree.cached_prefix_blocks(h)) for h in waiting])

    def promote_hot(self, limit: int = 4) -> int:
        """HotPrefix's periodic promotion: the hottest whole host runs hanging from a tree node go back on the
        device, into free blocks or in place of colder unlocked device leaves (fewer uses); their copies join
        the pending ones. Returns the blocks promoted."""
        assert self.tiers is not None
        tree, pool, done, tried = self._tree, self._pool, 0, 0
        while tried < limit:
            roots = [r for r in self.tiers.hot_roots(tree.leaf_ending) if tree.graftable(r[1], r[2])]
            if not roots:
                break
            # NOTE: recomputed after each graft: a deeper run may hang from the leaf just grafted
            hot, anchor, tokens, run = roots[0]
            tried, n = tried + 1, len(run)
            if pool.free_count < n:
                coldest = tree.coldest_leaf_uses()
                if coldest is None or hot <= coldest:
                    break  # the rest are no hotter
                found = [(Tier.HOST, 0, h) for h in run]
                self.tiers.pin(found)  # NOTE: not a victim of the demotions this eviction causes
                tree.lock(anchor)  # nor is the node it hangs from
                tree.evict(n - pool.free_count, self._policy)
                tree.unlock(anchor)
                self.tiers.unpin(found)
                if pool.free_count < n:
                    continue
            blocks = pool.allocate(n)
            assert blocks is not None
            leaf = tree.graft(anchor, tokens, blocks, run)
            pool.unref_all(blocks)  # the tree holds its own reference
            if leaf is None:
                break
            leaf.hits = self.tiers.placement.carried_hits(hot)  # its uses come back with it
            self.tiers.promoted_run(run, blocks)
            done += n
        return done

    def copy_failed(self, copy: BlockCopy) -> None:
        """The shard could not run ``copy`` (see :meth:`TierManager.copy_failed`)."""
        if self.tiers is not None:
            self.tiers.copy_failed(copy)

    @contextmanager
    def batch(self, planned: Sequence[list[int]] = ()) -> Iterator[None]:
        """Allocations made inside share one eviction scan (see :meth:`RadixTree.begin_batch`); no release,
        cache_prompt or demand change may happen inside.

        ``planned``: the block hashes of each request of the batch being planned, counted as planned demand
        from just before the batch's first eviction until it ends. Only eviction keys read planned demand, so
        this is the same as counting it all along; a batch that evicts nothing (free memory) then skips the
        table updates and the re-keying they would cause at the next eviction."""
        if self.tiers is not None and self.tiers.placement.promote_period:
            self._batches += 1
            if self._batches % self.tiers.placement.promote_period == 0:
                self.promote_hot()
        self._tree.begin_batch(self._policy)
        self._plan = list(planned)
        try:
            yield
        finally:
            self._tree.end_batch()
            counted, self._plan, self._counted = self._counted, [], []
            if counted and self._plan_alone:
                self._demand.planned.clear()  # NOTE: the usual case; one C-level clear, not a loop per hash
            else:
                for hashes in counted:
                    self._demand.planned.remove(hashes)

    def _count_plan(self) -> None:
        """The batch's first eviction is due: count its planned demand (before the tree syncs its heap)."""
        self._counted, self._plan = self._plan, []
        self._plan_alone = not len(self._demand.planned)
        self._demand.planned.add_all(self._counted)

    def check_integrity(self) -> set[int]:
        """Pool and tree invariants; returns the cached blocks. Raises AssertionError."""
        self._pool.check_integrity()
        if self.tiers is not None:
            self.tiers.check()
        return self._tree.check_integrity()

    def cached_hashes(self) -> set[int]:
        """Every cached block's chained hash, O(cached blocks): for checks and occasional bookkeeping."""
        return self._tree.cached_hashes()
