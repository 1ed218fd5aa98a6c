"""Radix tree over token ids at block granularity, one subtree per namespace.

Edges hold whole blocks: a node's token ids are the first ``len(blocks) * block_size`` of its ``tokens`` (an
eviction cut leaves the rest as a stale tail, dropped when the node is next compared), and a child is keyed by
the tuple of its first block's tokens. Each namespace (tenant, adapter) has its own root, so two namespaces
never share a node. The tree holds one pool reference per cached block; a request that matched a path locks it
(every node from the match up to the root) and holds its own reference on the matched blocks.

Clocks are logical (one tick per touch or insert), never wall time, so tests are deterministic.

Heat (read by DART): a node's count of uses (the request that cached it, then every match through it), each
use decaying by half once the tree has taken in ``heat_half_life`` cache capacities of new blocks (so the
horizon scales with the cache, not with the request rate), kept in the log form of :mod:`prism_cache.decay` on
the clock of blocks inserted so far. Eviction candidates live in :mod:`prism_cache.eviction_index`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Mapping
from operator import attrgetter
from typing import TYPE_CHECKING

from prism_cache.block_pool import BlockPool
from prism_cache.decay import add_use, decay_tau
from prism_cache.eviction_index import EvictionIndex
from prism_cache.node import Node, Root, Tokens

if TYPE_CHECKING:
    from prism_cache.observer import CacheObserver
    from prism_cache.policies.base import Key, RetentionPolicy

__all__ = ["Node", "RadixTree", "Tokens"]


class RadixTree:
    """Match, insert, lock/unlock and evict over one :class:`BlockPool`.

    Invariants (:meth:`check_integrity`): every cached block is in exactly one node and has a pool reference
    from the tree; blocks of unlocked nodes have no other reference; a parent's lock is at least the sum of its
    children's; ``leaves`` is exactly the set of non-root nodes without children.
    """

    def __init__(
        self,
        pool: BlockPool,
        block_size: int,
        heat_half_life: float = 3.0,
        observer: CacheObserver | None = None,
    ) -> None:
        """Args: heat_half_life: cache capacities of newly inserted blocks after which a use counts half
        (> 0); observer: told of every block stored and evicted (None: nobody watches, no cost). Raises
        ValueError on a block size < 1 or a half-life <= 0."""
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if heat_half_life <= 0:
            raise ValueError(f"heat_half_life must be > 0, got {heat_half_life}")
        self.pool = pool
        self.block_size = block_size
        self.tick = 0
        self.inserted_blocks = 0  # the heat clock
        self._heat_tau = decay_tau(heat_half_life, pool.usable_blocks)
        self.cached_blocks = 0
        self.evicted_blocks = 0
        self.version = 0  # bumped whenever blocks enter or leave the tree (cached peeks compare it)
        # NOTE: only namespaces with cached nodes: a root is dropped with its last child, so the table follows
        # what is cached, not every namespace (tenant, cache_salt) ever served
        self._roots: dict[str, Root] = {}
        # NOTE: each node by its first block's hash, so cached_prefix_blocks walks node to node (an index of
        # every cached block's hash would cost a set insert per inserted block and a removal per evicted one)
        self._heads: dict[int, Node] = {}
        self._index = EvictionIndex()
        self._observer = observer
        # NOTE: told (node, keep) before an eviction cuts ``node`` to its first ``keep`` blocks (KV tiers
        # demote them); None: no tiers, no cost
        self.spill: Callable[[Node, int], None] | None = None

    # ---------------------------------------------------------------- lookups
    def root(self, namespace: str) -> Root:
        """The namespace's root (it holds no blocks and is never evicted). The tree keeps a root only while it
        has children: for a namespace with nothing cached this is a new root that nothing refers to, and an
        insert under it hangs its nodes from the namespace's kept root (:meth:`_kept`)."""
        return self._roots.get(namespace) or Root(namespace)

    def _kept(self, node: Node) -> Node:
        """``node``, or for a root (perhaps never kept, or dropped since it was handed out) the namespace's
        kept root, made now if there is none."""
        if not isinstance(node, Root):
            return node
        root = self._roots.get(node.namespace)
        if root is None:
            root = self._roots[node.namespace] = Root(node.namespace)
        return root

    def peek(self, namespace: str, tokens: Tokens) -> tuple[Node | None, int]:
        """Longest cached prefix of ``tokens`` in ``namespace``, without changing the tree (beyond dropping
        stale token tails, see :class:`Node`).

        Returns (the deepest node the prompt reaches, fully or partly; None on a miss) and the matched full
        blocks."""
        node, deepest = self._roots.get(namespace), None
        bs, pos, end = self.block_size, 0, len(tokens) // self.block_size * self.block_size
        while node is not None and pos < end:
            child = node.children.get(tokens[pos : pos + bs])
            if child is None:
                break
            k = self._common_blocks(child, tokens, pos)
            pos += k * bs
            deepest = child
            node = child if k == len(child.blocks) else None
        return deepest, pos // bs

    def cached_prefix_blocks(self, hashes: list[int]) -> int:
        """Leading blocks of a prompt cached, from its :func:`block_hashes` alone: from node to node by their
        first block's hash, comparing the prompt's hash with the node's at the node's end only (equal chained
        hashes mean equal prefixes), O(depth + log blocks). Exact up to hash collisions, so it may rank
        requests but never decides what a request reuses (``match`` does)."""
        heads, pos, n = self._heads, 0, len(hashes)
        while pos < n:
            node = heads.get(hashes[pos])
            if node is None:
                break
            own = node.hashes
            end = min(n, pos + len(own))
            if hashes[end - 1] != own[end - 1 - pos]:
                return self._common_hashes(own, hashes, pos, end)
            if end < pos + len(own):
                return end  # the prompt ends inside the node
            pos = end
        return pos

    def cached_hashes(self) -> set[int]:
        """Every cached block's chained hash: O(cached blocks), for occasional bookkeeping (pruning segment
        popularity and session return), never per request. NOTE: one set union in C over the nodes' hash
        lists, a third faster than a comprehension (5-6 ms at 65,536 blocks); a set kept as blocks enter and
        leave would make this a copy, but cost a set insert per inserted block (+18 us on a 3k-token miss)."""
        return set().union(*map(attrgetter("hashes"), self._heads.values()))

    @staticmethod
    def _common_hashes(own: list[int], hashes: list[int], pos: int, end: int) -> int:
        """End of the common run of ``hashes[pos:end]`` and a node's ``own`` hashes, knowing the first block
        agrees and the last does not (binary search: a chain that differs once differs from there on)."""
        lo, hi = pos + 1, end - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if hashes[mid - 1] == own[mid - 1 - pos]:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def match(self, namespace: str, tokens: Tokens) -> tuple[Node, list[int]]:
        """Longest cached prefix of ``tokens`` (full blocks only).

        Returns the deepest matched node and the matched blocks in order (the namespace's :meth:`root` and
        [] on a miss). When the match ends inside a node, that node is split at the block boundary so the
        returned node covers exactly the match (splitting keeps locks, hits, heat and recency on both
        halves). Does not touch, lock or free.
        """
        node, pos, bs = self.root(namespace), 0, self.block_size
        end = len(tokens) // bs * bs
        blocks: list[int] = []
        while pos < end:
            child = node.children.get(tokens[pos : pos + bs])
            if child is None:
                break
            k = self._common_blocks(child, tokens, pos)
            partial = k < len(child.blocks)
            if partial:
                child = self._split(child, k)
            blocks.extend(child.blocks)
            node, pos = child, pos + k * bs
            if partial:
                break
        return node, blocks

    def _common_blocks(self, child: Node, tokens: Tokens, pos: int) -> int:
        """Blocks of ``child`` equal to ``tokens[pos:]`` (>= 1: the first block is the child's key)."""
        bs = self.block_size
        n = len(child.blocks) * bs
        own = child.tokens
        if len(own) > n:
            own = child.tokens = own[:n]  # the stale tail of eviction cuts (see Node)
        if tokens[pos : pos + n] == own:
            return len(child.blocks)
        k = 1
        limit = min(len(child.blocks), (len(tokens) - pos) // bs)
        while k < limit and tokens[pos + k * bs : pos + (k + 1) * bs] == own[k * bs : (k + 1) * bs]:
            k += 1
        return k

    def _split(self, node: Node, k: int) -> Node:
        """Cut ``node`` after its first k blocks; returns the new upper node (``node`` keeps the lower part,
        so handles to the deepest node stay valid)."""
        bs, parent = self.block_size, node.parent
        assert parent is not None and 0 < k < len(node.blocks)
        upper = Node(node.edge, node.tokens[: k * bs], node.blocks[:k], node.hashes[:k], parent)
        upper.lock, upper.last_access, upper.hits = node.lock, node.last_access, node.hits
        upper.heat = node.heat
        node.tokens, node.blocks, node.hashes = node.tokens[k * bs :], node.blocks[k:], node.hashes[k:]
        node.edge, node.parent = node.tokens[:bs], upper
        upper.children[node.edge] = node
        parent.children[upper.edge] = upper
        self._heads[upper.hashes[0]] = upper
        self._heads[node.hashes[0]] = node
        self._index.mark(node)  # a shorter node may rank differently
        return upper

    # ---------------------------------------------------------------- recency, locks
    def touch(self, node: Node, hit: bool = True) -> None:
        """Stamp ``node`` and its ancestors with a new tick; with ``hit``, count one reuse (hits, heat) on
        each."""
        self.tick += 1
        self._index.mark(node)  # only the deepest node can be a leaf
        while node.parent is not None:
            node.last_access = self.tick
            if hit:
                node.hits += 1
                self._add_use(node)
            node = node.parent

    def heat_now(self) -> float:
        """The log-form heat of one use made now (compare with :attr:`Node.heat`)."""
        return self.inserted_blocks / self._heat_tau

    def _add_use(self, node: Node) -> None:
        node.heat = add_use(node.heat, self.heat_now())

    def lock(self, node: Node) -> None:
        """Pin ``node`` and its ancestors: a locked node is never evicted."""
        self._index.mark(node)
        while node.parent is not None:
            node.lock += 1
            node = node.parent

    def unlock(self, node: Node) -> None:
        """Undo one :meth:`lock` of the same node. Raises ValueError if that path is not locked."""
        self._index.mark(node)
        walk: Node | None = node
        while walk is not None and walk.parent is not None:
            if walk.lock <= 0:
                raise ValueError("unlock of a path that is not locked")
            walk.lock -= 1
            if walk.lock == 0:
                self._index.unlocked(walk, self.tick)
            walk = walk.parent

    # ---------------------------------------------------------------- insert
    def insert(
        self,
        namespace: str,
        tokens: Tokens,
        blocks: list[int],
        hashes: list[int],
        start: tuple[Node, int] | None = None,
    ) -> tuple[int, Node]:
        """Cache ``blocks`` (one per full block of ``tokens``; ``hashes`` parallel) under ``namespace``.

        Args: start: (node, n) to skip walking a known prefix: ``node`` must be a *locked* node whose path is
        exactly the first n blocks of ``tokens`` (a locked node is never cut, and splits keep its path end).
        Returns: how many leading blocks were already cached (the tree keeps its own blocks for those and takes a
        reference only on the new ones, so the caller frees its duplicates by dropping its own references), and
        the node where the inserted path ends. Splits a node where the new path diverges inside it; touches the
        inserted path.
        """
        node, i = start if start is not None else (self.root(namespace), 0)
        if blocks:
            node = self._kept(node)
        bs = self.block_size
        pos = i * bs
        existing = len(blocks)
        while i < len(blocks):
            child = node.children.get(tokens[pos : pos + bs])
            if child is None:
                existing = i
                node = self._add_leaf(namespace, node, tokens[pos : len(blocks) * bs], blocks[i:], hashes[i:])
                break
            k = min(self._common_blocks(child, tokens, pos), len(blocks) - i)
            if k < len(child.blocks):
                child = self._split(child, k)
            node, i, pos = child, i + k, pos + k * bs
        self.touch(node, hit=False)
        return existing, node

    def raise_hits(self, namespace: str, tokens: Tokens, hits: Mapping[int, int]) -> None:
        """Raise the hits of the nodes that end the cached path of ``tokens``, from its end up while every
        block of the node has an entry in ``hits`` (hash -> hits), to the node's least entry: the uses a lower
        KV tier counted for blocks it gave back. Splits the node where ``tokens`` end inside it, as
        :meth:`match` does, so blocks without an entry below that point keep their own count."""
        node, _ = self.match(namespace, tokens)
        while node.parent is not None and all(h in hits for h in node.hashes):
            n = min(hits[h] for h in node.hashes)
            if n > node.hits:
                node.hits = n
                self._index.mark(node)  # a policy key may read hits
            node = node.parent

    def graftable(self, parent: Node, tokens: Tokens) -> bool:
        """``parent`` is in the tree and has no child starting with ``tokens``' first block."""
        if isinstance(parent, Root):
            parent = self.root(parent.namespace)  # NOTE: a namespace's nodes hang from its kept root
        else:
            up = parent.parent
            if up is None or up.children.get(parent.edge) is not parent or not parent.blocks:
                return False
        return tuple(tokens[: self.block_size]) not in parent.children

    def leaf_ending(self, h: int) -> Node | None:
        """The leaf whose last block has hash ``h``, or None."""
        return self._index.leaf_with_tail(h)

    def coldest_leaf_uses(self) -> int | None:
        """The fewest uses (hits + 1) of an unlocked leaf, or None: O(leaves), for periodic promotion."""
        return min((n.hits + 1 for n in self._index.leaves if not n.lock), default=None)

    def graft(self, parent: Node, tokens: Tokens, blocks: list[int], hashes: list[int]) -> Node | None:
        """Hang ``blocks`` (their ``tokens`` and ``hashes``) as a new leaf under ``parent`` (KV tiers
        promoting a block run back), taking a reference on each. Returns None, taking nothing, if ``parent``
        left the tree or already has a child starting with those tokens."""
        if not self.graftable(parent, tokens):
            return None
        parent = self._kept(parent)
        root = parent
        while root.parent is not None:
            root = root.parent
        assert isinstance(root, Root)
        namespace = root.namespace
        leaf = self._add_leaf(namespace, parent, tuple(tokens), list(blocks), list(hashes))
        self.touch(leaf, hit=False)
        return leaf

    def _add_leaf(
        self, namespace: str, parent: Node, tokens: Tokens, blocks: list[int], hashes: list[int]
    ) -> Node:
        """Takes ownership of ``blocks`` and ``hashes`` (fresh slices from :meth:`insert`)."""
        leaf = Node(tokens[: self.block_size], tokens, blocks, hashes, parent)
        leaf.heat = self.heat_now()  # one use: the request that cached it
        self.inserted_blocks += len(blocks)
        self.pool.ref_all(leaf.blocks)
        parent.children[leaf.edge] = leaf
        self._index.leaf_added(parent, leaf)
        self.cached_blocks += len(blocks)
        self._heads[hashes[0]] = leaf
        self.version += 1
        if self._observer is not None:
            parent_hash = parent.hashes[-1] if parent.parent is not None else None
            self._observer.stored(
                namespace, parent_hash, tuple(hashes), tokens
            )
        return leaf

    # ---------------------------------------------------------------- eviction
    def begin_batch(self, policy: RetentionPolicy) -> None:
        """Start a batch of allocations (matches, locks, evictions, rollbacks; no inserts, no demand changes):
        the eviction heap is made exact once, on the batch's first eviction, and kept until :meth:`end_batch`,
        so k evictions cost one sync instead of k. Only for policies with ``stable_keys`` (no key drops under
        those operations); entries whose key rose since are re-ranked when they surface."""
        self._index.begin_batch(policy)

    def end_batch(self) -> None:
        self._index.end_batch()

    def evict(self, n_blocks: int, policy: RetentionPolicy) -> int:
        """Free up to ``n_blocks`` blocks from unlocked leaves, lowest ``policy.key`` first.

        A leaf loses its tail blocks one key at a time (the key is re-read for the shortened node, as policies
        may rank a shorter node differently); an emptied leaf is removed and its parent may become a candidate.
        Locked nodes are never touched. Returns the number of blocks freed (less than asked if nothing else is
        evictable).
        """
        index = self._index
        heap = index.candidates(policy, self.tick)
        freed = 0
        while freed < n_blocks and heap:
            key, _, seq, node = heapq.heappop(heap)
            if seq < node.valid_from:
                continue  # voided at a sync: not a candidate
            if node.lock or node not in index.leaves:
                continue  # locked or removed since the candidates were gathered
            current = policy.key(node, len(node.blocks), self.tick)
            if current != key:
                index.push(heap, node, current)
                continue
            cut = self._blocks_to_cut(node, n_blocks - freed, policy, index.top_key(heap))
            freed += self._truncate(node, cut)
            if node.blocks:
                index.push(heap, node, policy.key(node, len(node.blocks), self.tick))
            else:
                parent = self._remove_leaf(node)
                if parent is not None and parent.lock == 0:
                    index.push(heap, parent, policy.key(parent, len(parent.blocks), self.tick))
        self.evicted_blocks += freed
        return freed

    def _blocks_to_cut(self, node: Node, need: int, policy: RetentionPolicy, next_key: Key | None) -> int:
        """Tail blocks of ``node`` to evict now: the c-th tail block goes too while it, as the node's tail
        (``key(node, size - c + 1)``), ranks no higher than the next candidate. Binary search: keys never
        decrease as a node is cut (the policy contract), so this costs O(log blocks) key calls."""
        size = len(node.blocks)
        lo, hi = 1, min(need, size)
        if next_key is None:
            return hi
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if policy.key(node, size - mid + 1, self.tick) <= next_key:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _truncate(self, node: Node, cut: int) -> int:
        keep = len(node.blocks) - cut
        if self.spill is not None:
            self.spill(node, keep)
        freed = self.pool.unref_all(node.blocks[keep:])
        if self._observer is not None:
            self._observer.removed(node.hashes[keep:])
        assert freed == cut, "an evicted block is still referenced by a request"
        del node.blocks[keep:]
        self._index.tail_cut(node, keep)
        if not keep:
            del self._heads[node.hashes[0]]
        del node.hashes[keep:]  # node.tokens keeps its tail until next read (see Node)
        self.cached_blocks -= cut
        self.version += 1
        return cut

    def _remove_leaf(self, node: Node) -> Node | None:
        """Detach an emptied leaf; returns its parent if that became an evictable leaf."""
        parent = node.parent
        assert parent is not None and not node.children
        del parent.children[node.edge]
        became_leaf = self._index.leaf_removed(node, parent)
        if isinstance(parent, Root) and not parent.children:
            del self._roots[parent.namespace]  # it holds nothing now; the next insert makes it again
        return parent if became_leaf else None

    # ---------------------------------------------------------------- introspection
    def nodes(self) -> Iterator[Node]:
        """Every non-root node, parents before children."""
        stack = list(self._roots.values())
        while stack:
            node = stack.pop()
            if node.parent is not None:
                yield node
            stack.extend(node.children.values())

    def node_count(self) -> int:
        return sum(1 for _ in self.nodes())

    def check_integrity(self) -> set[int]:
        """Check the invariants in the class docstring; returns the set of cached blocks.
        Raises AssertionError on the first violation. O(nodes + blocks)."""
        seen: set[int] = set()
        leaves: set[Node] = set()
        for node in self.nodes():
            self._check_node(node, seen)
            if not node.children:
                leaves.add(node)
        for ns, root in self._roots.items():
            assert root.lock == 0 and not root.blocks, "roots hold no blocks and no locks"
            assert root.namespace == ns and root.children, "a kept root names its namespace and has children"
        self._index.check(leaves)
        assert len(seen) == self.cached_blocks, "cached block count out of date"
        assert self._heads == {n.hashes[0]: n for n in self.nodes()}, "head index out of date"
        return seen

    def _check_node(self, node: Node, seen: set[int]) -> None:
        bs, parent = self.block_size, node.parent
        assert parent is not None and parent.children.get(node.edge) is node, "parent link broken"
        assert node.blocks and len(node.blocks) == len(node.hashes), "blocks and hashes differ in length"
        assert len(node.tokens) >= len(node.blocks) * bs and len(node.tokens) % bs == 0, "tokens misaligned"
        assert node.edge == node.tokens[:bs], "child key differs from the first block"
        assert node.lock >= 0 and node.lock >= sum(c.lock for c in node.children.values()), "lock counts"
        for b in node.blocks:
            assert b not in seen, f"block {b} cached twice"
            seen.add(b)
            refs = self.pool.refcount(b)
            assert refs >= 1, f"cached block {b} has no reference"
            assert node.lock > 0 or refs == 1, f"unlocked cached block {b} is referenced by a request"
