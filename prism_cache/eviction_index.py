"""The radix tree's eviction candidates: its leaves, each leaf's tail hash, and the persistent eviction heap.

For a ``stable_keys`` policy the heap persists between evictions: every change that can move a leaf's key
(touch, lock, unlock, split, insert, a demand change on its last block) marks the node dirty (an eviction
re-pushes the nodes it cuts exactly, see :meth:`EvictionIndex.push`), and a sync voids the dirty nodes'
entries and re-keys only them, so a full cache costs O(changes) per eviction instead of O(leaves). Other
policies get a fresh heap per eviction. Entries are ``(key, id, seq, node)``; one with ``seq <
node.valid_from`` is void.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prism_cache.node import Node

if TYPE_CHECKING:
    from prism_cache.policies.base import Key, RetentionPolicy

Entry = tuple["Key", int, int, Node]


class _TailWatch:
    """Takes a demand table's changed hashes for the eviction heap, keeping only current leaf tails (the only
    hashes demand keys read). A hash that becomes a tail later needs no record: a node whose tail changes
    is re-keyed then (a cut re-pushes it, a new leaf or a parent left a leaf is marked or pushed), so a sync
    never intersects every changed hash with the tails."""

    def __init__(self, tails: set[int], changed: set[int]) -> None:
        self.tails, self.changed = tails, changed

    def update(self, hashes: Iterable[int], /) -> None:
        self.changed.update(self.tails.intersection(hashes))


class EvictionIndex:
    """Invariants (:meth:`check`): ``leaves`` is exactly the set of non-root nodes without children, and each
    leaf is indexed by its last block's hash (what demand keys read)."""

    def __init__(self) -> None:
        self.leaves: set[Node] = set()
        self._tails: dict[int, Node] = {}
        # NOTE: the same hashes as a set, for the set operations with changed demand (_TailWatch, _sync):
        # set & set uses the stored hashes, where a dict's keys view rehashes every int.
        self._tail_set: set[int] = set()
        self._heap: list[Entry] | None = None
        self._heap_policy: RetentionPolicy | None = None
        self._seq = 0
        self._dirty: set[Node] = set()
        self._changed: set[int] = set()  # leaf tails whose demand changed since the last sync
        self._watch = _TailWatch(self._tail_set, self._changed)  # what the demand tables tell
        self._batch_policy: RetentionPolicy | None = None
        self._synced = False  # the heap was synced in the current batch: it is the batch's heap

    # ---------------------------------------------------------------- leaves
    def leaf_added(self, parent: Node, leaf: Node) -> None:
        """``leaf`` was hung under ``parent`` (which stops being a leaf if it was one)."""
        if parent in self.leaves:
            self.leaves.remove(parent)
            self._drop_tail(parent.hashes[-1])
            self.mark(parent)  # its entries are void now
        self.leaves.add(leaf)
        self._set_tail(leaf.hashes[-1], leaf)
        self.mark(leaf)
        self._bound_heap_debt()

    def tail_cut(self, node: Node, keep: int) -> None:
        """``node`` is about to keep only its first ``keep`` blocks (its hashes are still whole)."""
        self._drop_tail(node.hashes[-1])
        if keep:
            self._set_tail(node.hashes[keep - 1], node)

    def leaf_removed(self, node: Node, parent: Node) -> bool:
        """An emptied leaf was detached from ``parent``; returns True if ``parent`` became a leaf."""
        self.leaves.discard(node)
        self.mark(node)  # void its entries
        if parent.parent is not None and not parent.children:
            self.leaves.add(parent)
            self._set_tail(parent.hashes[-1], parent)
            return True
        return False

    def leaf_with_tail(self, h: int) -> Node | None:
        return self._tails.get(h)

    def _set_tail(self, h: int, leaf: Node) -> None:
        self._tails[h] = leaf
        self._tail_set.add(h)

    def _drop_tail(self, h: int) -> None:
        del self._tails[h]
        self._tail_set.remove(h)

    # ---------------------------------------------------------------- batches
    def begin_batch(self, policy: RetentionPolicy) -> None:
        """See :meth:`RadixTree.begin_batch`."""
        self._batch_policy = policy if policy.stable_keys else None
        self._synced = False

    def end_batch(self) -> None:
        self._batch_policy = None
        self._synced = False

    # ---------------------------------------------------------------- the heap
    def candidates(self, policy: RetentionPolicy, tick: int) -> list[Entry]:
        """A heap whose live entries are exactly the unlocked leaves under their current keys; inside a batch,
        the batch's heap as synced on its first use."""
        if not policy.stable_keys:
            return self._fresh_heap(policy, tick)
        if self._heap is None or self._heap_policy is not policy:
            self._start_heap(policy, tick)
        elif not (self._synced and self._batch_policy is policy):
            self._sync(policy, tick)
        self._synced = self._batch_policy is policy
        assert self._heap is not None
        return self._heap

    def _fresh_heap(self, policy: RetentionPolicy, tick: int) -> list[Entry]:
        heap = []
        for n in self.leaves:
            if n.lock == 0:
                heap.append((policy.key(n, len(n.blocks), tick), id(n), self._seq, n))
                self._seq += 1
        heapq.heapify(heap)
        return heap

    def _start_heap(self, policy: RetentionPolicy, tick: int) -> None:
        self._drop_heap()
        self._heap, self._heap_policy = self._fresh_heap(policy, tick), policy
        for table in policy.demand_tables():
            table.watch(self._watch)

    def _drop_heap(self) -> None:
        if self._heap_policy is not None:
            for table in self._heap_policy.demand_tables():
                table.unwatch(self._watch)
        self._heap, self._heap_policy = None, None
        self._dirty.clear()
        self._changed.clear()

    def _sync(self, policy: RetentionPolicy, tick: int) -> None:
        """Make the persistent heap exact: void and re-key the dirty nodes (rebuild it once void entries
        outnumber the live ones, so it stays O(leaves) in size)."""
        heap, tails, dirty = self._heap, self._tails, self._dirty
        assert heap is not None
        if len(heap) > 2 * len(self.leaves) + 64:
            self._heap = None
            self._start_heap(policy, tick)
            return
        dirty.update(map(tails.__getitem__, self._tail_set & self._changed))
        self._changed.clear()
        for node in dirty:
            if node.lock == 0 and node in self.leaves:
                self.push(heap, node, policy.key(node, len(node.blocks), tick))
            else:
                node.valid_from = self._seq  # void: not a candidate
        dirty.clear()

    def push(self, heap: list[Entry], node: Node, key: Key) -> None:
        """Push ``node``'s entry under its current ``key``. Into the persistent heap: void its older entries
        (a stale twin included), so it has one exact entry and a later sync re-keys it only if something marks
        it again. Into a fresh heap: mark it, for a persistent heap of another policy."""
        if heap is self._heap:
            node.valid_from = self._seq
        else:
            self.mark(node)
        heapq.heappush(heap, (key, id(node), self._seq, node))
        self._seq += 1

    @staticmethod
    def top_key(heap: list[Entry]) -> Key | None:
        """The lowest key among the heap's non-void entries (void ones on top are dropped)."""
        while heap and heap[0][2] < heap[0][3].valid_from:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def mark(self, node: Node) -> None:
        """``node``'s key may have changed: re-key it at the next sync (while a persistent heap is kept)."""
        if self._heap is not None:
            self._dirty.add(node)

    def _bound_heap_debt(self) -> None:
        """Without evictions nothing syncs: past O(leaves) pending changes, a rebuild is cheaper, so drop."""
        if self._heap is not None and len(self._dirty) + len(self._changed) > 4 * len(self.leaves) + 4096:
            self._drop_heap()

    def unlocked(self, node: Node, tick: int) -> None:
        """``node`` just became unlocked: a leaf rejoins the batch's candidates."""
        if self._synced and self._heap is not None and node in self.leaves:
            assert self._batch_policy is not None
            self.push(self._heap, node, self._batch_policy.key(node, len(node.blocks), tick))

    def check(self, leaves: set[Node]) -> None:
        """Raises AssertionError unless ``leaves`` (the tree's, counted afresh) are the indexed ones."""
        assert leaves == self.leaves, "leaf set out of date"
        assert self._tails == {n.hashes[-1]: n for n in leaves}, "leaf tails out of date"
        assert self._tail_set == self._tails.keys(), "leaf tail set out of date"
