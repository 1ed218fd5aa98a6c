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
    rollback(allocation)       unlock and drop references, inserting nothing (allocation never half-done)

Block table of one allocation (bs = block size, P = prefix_len, T = tokens reserved):

    | matched blocks (tree's, referenced) | fresh blocks (this request's)             |
    | 0 .............................. P  | P ................................ ceil(T/bs)*bs
    slots = every token position of the table, cut at exactly T

With ``prefix_caching=False`` nothing is matched or inserted (TGI's SimpleAllocator, same block order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from prism_cache.block_pool import BlockPool
from prism_cache.demand import Demand
from prism_cache.hashing import block_hashes
from prism_cache.node import Node, Tokens
from prism_cache.observer import CacheObserver
from prism_cache.policies import PolicyConfig, make_policy
from prism_cache.popularity import SegmentPopularity
from prism_cache.radix_tree import RadixTree
from prism_cache.session_return import SessionReturn


@dataclass
class Allocation:
    """blocks: the lifetime block table; slots: ``tokens`` slot ids; prefix_len: tokens of the table already
    cached (a multiple of the block size, at most the prompt's full blocks); node: the locked path's deepest
    node (the namespace root on a miss), or None without a prompt; depth: blocks on that path. node and depth
    move deeper when :meth:`RadixAllocator.cache_prompt` publishes the prompt early."""

    namespace: str
    blocks: tuple[int, ...]
    slots: tuple[int, ...]
    prefix_len: int
    node: Node | None
    depth: int = 0


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
    ) -> None:
        """Args: policy: a typed :class:`PolicyConfig`, or a policy name whose knobs ``params`` holds (flat
        ``--scheduler-param`` keys); observer: told of every block the tree stores and evicts
        (:class:`CacheObserver`). Raises ValueError for an unknown policy or a bad knob."""
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

    def hashes(self, namespace: str, prompt: Tokens) -> list[int]:
        return block_hashes(namespace, prompt, self.block_size)

    def _kept_positions(self) -> set[int]:
        """Positions whose popularity records must stay: cached or waiting."""
        kept = self._tree.cached_hashes()
        kept.update(self._demand.queued)
        return kept

    # ---------------------------------------------------------------- the queue's demand
    def enqueue(self, namespace: str, prompt: Tokens, hashes: list[int], session: str | None = None) -> None:
        """A request with these :meth:`hashes` entered the queue: count its queued demand, popularity and
        session (``session``: the id it named, if any)."""
        self._demand.queued.add(hashes)
        self.observe(namespace, prompt, hashes)
        if self._demand.sessions is not None:
            name = f"{namespace}\x00{session}" if session else None
            self._demand.sessions.observe(hashes, name, self._tree.heat_now())

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
        caching off); O(depth + log blocks), for ranking only (see :meth:`RadixTree.cached_prefix_blocks`)."""
        return self._tree.cached_prefix_blocks(hashes) * self.block_size if self.prefix_caching else 0

    def allocate(self, tokens: int, namespace: str = "", prompt: Tokens | None = None) -> Allocation | None:
        """Reserve ``tokens`` slots, reusing the cached prefix of ``prompt`` (None: match nothing).

        Returns None, with nothing held, when the free blocks plus what can be evicted fall short; the match's
        recency stamp stays (as in TGI). On success the matched path is locked until release/rollback.
        """
        node: Node | None = None
        prefix: list[int] = []
        if prompt is not None and self.prefix_caching:
            node, prefix = self._tree.match(namespace, prompt)
            self._tree.touch(node)
            self._tree.lock(node)
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
            return None
        self._pool.ref_all(prefix)
        blocks = tuple(prefix + fresh)
        return Allocation(namespace, blocks, self._slots(blocks, tokens), len(prefix) * bs, node, len(prefix))

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
        self.rollback(alloc)

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
        alloc.node, alloc.depth = node, depth

    def _insert_prompt(self, alloc: Allocation, prompt: Tokens, hashes: list[int] | None) -> tuple[Node, int]:
        """Insert the prompt's full blocks, walking from the allocation's locked node; returns the path end."""
        n_full = min(len(prompt) // self.block_size, len(alloc.blocks))
        if hashes is None:
            hashes = self.hashes(alloc.namespace, prompt)
        start = (alloc.node, alloc.depth) if alloc.node is not None and alloc.depth <= n_full else None
        _, node = self._tree.insert(
            alloc.namespace,
            prompt[: n_full * self.block_size],
            list(alloc.blocks[:n_full]),
            hashes[:n_full],
            start,
        )
        return node, n_full

    def rollback(self, alloc: Allocation) -> None:
        """Undo :meth:`allocate` without caching anything."""
        if alloc.node is not None:
            self._tree.unlock(alloc.node)
        self._pool.unref_all(alloc.blocks)

    @contextmanager
    def batch(self, planned: Sequence[list[int]] = ()) -> Iterator[None]:
        """Allocations made inside share one eviction scan (see :meth:`RadixTree.begin_batch`); no release,
        cache_prompt or demand change may happen inside.

        ``planned``: the block hashes of each request of the batch being planned, counted as planned demand
        from just before the batch's first eviction until it ends. Only eviction keys read planned demand, so
        this is the same as counting it all along; a batch that evicts nothing (free memory) then skips the
        table updates and the re-keying they would cause at the next eviction."""
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
        return self._tree.check_integrity()

    def cached_hashes(self) -> set[int]:
        """Every cached block's chained hash, O(cached blocks): for checks and occasional bookkeeping."""
        return self._tree.cached_hashes()
