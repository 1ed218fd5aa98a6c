"""TGI's radix allocator (tgi-compat 2.2) over a :class:`BlockPool` and a :class:`RadixTree`.

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

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from prism_cache.block_pool import BlockPool
from prism_cache.demand import Demand
from prism_cache.hashing import block_hashes
from prism_cache.policies import make_policy
from prism_cache.policies.dart import POPULARITY_WEIGHT
from prism_cache.popularity import SegmentPopularity
from prism_cache.radix_tree import Node, RadixTree, Tokens


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


class RadixAllocator:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        policy: str = "lru",
        prefix_caching: bool = True,
        params: Mapping[str, float] | None = None,
    ) -> None:
        p = params or {}
        self.pool = BlockPool(num_blocks)
        half_life = p.get("dart_heat_half_life", 3.0)
        self.tree = RadixTree(self.pool, block_size, half_life)
        popularity = None
        if policy == "dart" and p.get("dart_popularity_weight", POPULARITY_WEIGHT):
            popularity = SegmentPopularity(self.pool.usable_blocks, half_life, block_size, self._kept_positions)
        self.demand = Demand(popularity)
        self.policy = make_policy(policy, self.demand, params)
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
        kept = self.tree.cached_hashes()
        kept.update(self.demand.queued)
        return kept

    def observe(self, namespace: str, prompt: Tokens, hashes: list[int]) -> None:
        """A request entered the queue: count its blocks' popularity (only where the policy reads it)."""
        if self.demand.popularity is not None:
            self.demand.popularity.observe(namespace, prompt, hashes)

    def peek(self, hashes: list[int]) -> int:
        """Cached prefix in tokens of the prompt with these :meth:`hashes`, touching nothing (0 with prefix
        caching off); O(depth + log blocks), for ranking only (see :meth:`RadixTree.cached_prefix_blocks`)."""
        return self.tree.cached_prefix_blocks(hashes) * self.block_size if self.prefix_caching else 0

    def allocate(self, tokens: int, namespace: str = "", prompt: Tokens | None = None) -> Allocation | None:
        """Reserve ``tokens`` slots, reusing the cached prefix of ``prompt`` (None: match nothing).

        Returns None, with nothing held, when the free blocks plus what can be evicted fall short; the match's
        recency stamp stays (as in TGI). On success the matched path is locked until release/rollback.
        """
        node: Node | None = None
        prefix: list[int] = []
        if prompt is not None and self.prefix_caching:
            node, prefix = self.tree.match(namespace, prompt)
            self.tree.touch(node)
            self.tree.lock(node)
        bs = self.block_size
        need = max(0, -(-tokens // bs) - len(prefix))
        short = need - self.pool.free_count
        if short > 0:
            if self._plan:
                self._count_plan()
            self.tree.evict(short, self.policy)
        fresh = self.pool.allocate(need)
        if fresh is None:
            if node is not None:
                self.tree.unlock(node)
            return None
        self.pool.ref_all(prefix)
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
            slots += ids  # NOTE: memcpy-like; chain.from_iterable went element by element, 2x slower
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
        self.tree.lock(node)
        if old is not None:
            self.tree.unlock(old)
        alloc.node, alloc.depth = node, depth

    def _insert_prompt(self, alloc: Allocation, prompt: Tokens, hashes: list[int] | None) -> tuple[Node, int]:
        """Insert the prompt's full blocks, walking from the allocation's locked node; returns the path end."""
        n_full = min(len(prompt) // self.block_size, len(alloc.blocks))
        if hashes is None:
            hashes = self.hashes(alloc.namespace, prompt)
        start = (alloc.node, alloc.depth) if alloc.node is not None and alloc.depth <= n_full else None
        _, node = self.tree.insert(
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
            self.tree.unlock(alloc.node)
        self.pool.unref_all(alloc.blocks)

    @contextmanager
    def batch(self, planned: Sequence[list[int]] = ()) -> Iterator[None]:
        """Allocations made inside share one eviction scan (see :meth:`RadixTree.begin_batch`); no release,
        cache_prompt or demand change may happen inside.

        ``planned``: the block hashes of each request of the batch being planned, counted as planned demand
        from just before the batch's first eviction until it ends. Only eviction keys read planned demand, so
        this is the same as counting it all along; a batch that evicts nothing (free memory) then skips the
        table updates and the re-keying they would cause at the next eviction."""
        self.tree.begin_batch(self.policy)
        self._plan = list(planned)
        try:
            yield
        finally:
            self.tree.end_batch()
            counted, self._plan, self._counted = self._counted, [], []
            if counted and self._plan_alone:
                self.demand.planned.clear()  # NOTE: the usual case; one C-level clear, not a loop per hash
            else:
                for hashes in counted:
                    self.demand.planned.remove(hashes)

    def _count_plan(self) -> None:
        """The batch's first eviction is due: count its planned demand (before the tree syncs its heap)."""
        self._counted, self._plan = self._plan, []
        self._plan_alone = not len(self.demand.planned)
        self.demand.planned.add_all(self._counted)

    def check_integrity(self) -> set[int]:
        """Pool and tree invariants; returns the cached blocks. Raises AssertionError."""
        self.pool.check_integrity()
        return self.tree.check_integrity()
