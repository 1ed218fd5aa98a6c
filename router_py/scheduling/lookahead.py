"""PCR's look-ahead window, kept incrementally for the ``lookahead-lru`` policy.

The next W waiting requests (arrival order; W = ``params["lookahead_window"]``, default 4, PCR's default
prefetch window) count as look-ahead demand on each of their blocks, and their cached path is refreshed
(touched) when they enter the window. Maintenance is O(W) per queue change.
"""

from __future__ import annotations

from prism_cache import RadixAllocator
from router_py.scheduling.waiting import Waiting, WaitingQueue
from router_py.scheduling.interface import SchedulerConfig


class LookaheadWindow:
    def __init__(self, allocator: RadixAllocator, size: int) -> None:
        if size < 1:
            raise ValueError(f"lookahead_window must be >= 1, got {size}")
        self.allocator = allocator
        self.size = size
        self.members: set[int] = set()

    @classmethod
    def for_config(cls, config: SchedulerConfig, allocator: RadixAllocator | None) -> LookaheadWindow | None:
        """A window when the policy is ``lookahead-lru`` and there is a prefix cache, else None."""
        if allocator is None or config.cache_policy != "lookahead-lru" or not config.prefix_caching:
            return None
        return cls(allocator, int(config.params.get("lookahead_window", 4)))

    def refresh(self, queue: WaitingQueue) -> None:
        """Bring the first W waiting requests into the window (the ones leaving were removed by ``leave``)."""
        for entry in queue.head(self.size):
            if entry.request.id not in self.members and entry.hashes:
                self.members.add(entry.request.id)
                self.allocator.demand.lookahead.add(entry.hashes)
                tree = self.allocator.tree
                node, _ = tree.match(entry.request.namespace, entry.tokens)
                tree.touch(node)

    def leave(self, entry: Waiting) -> None:
        if entry.request.id in self.members:
            self.members.discard(entry.request.id)
            self.allocator.demand.lookahead.remove(entry.hashes)
