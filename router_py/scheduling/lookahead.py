"""PCR's look-ahead window, kept incrementally for the ``lookahead-lru`` policy.

The next W waiting requests (arrival order; W = :attr:`LookaheadParams.window`) count as look-ahead demand on
each of their blocks, and their cached path is refreshed (touched) when they enter the window. Maintenance is O(W) per queue change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from prism_cache import RadixAllocator
from prism_cache.params import parse_knobs
from router_py.scheduling.interface import SchedulerConfig
from router_py.scheduling.waiting import Waiting, WaitingQueue


@dataclass(frozen=True)
class LookaheadParams:
    """``lookahead_*`` knobs (for a policy that reads look-ahead demand: ``lookahead-lru``)."""

    PREFIX: ClassVar[str] = "lookahead_"
    window: int = 4  # next W waiting requests protected (PCR's default prefetch window)


class LookaheadWindow:
    def __init__(self, allocator: RadixAllocator, size: int) -> None:
        if size < 1:
            raise ValueError(f"lookahead_window must be >= 1, got {size}")
        self.allocator = allocator
        self.size = size
        self.members: set[int] = set()

    @classmethod
    def for_config(cls, config: SchedulerConfig, allocator: RadixAllocator | None) -> LookaheadWindow | None:
        """A window when the policy reads look-ahead demand and there is a prefix cache, else None."""
        if allocator is None or not allocator.uses_lookahead or not config.prefix_caching:
            return None
        return cls(allocator, parse_knobs(LookaheadParams, config.params).window)

    def refresh(self, queue: WaitingQueue) -> None:
        """Bring the first W waiting requests into the window (the ones leaving were removed by ``leave``)."""
        for entry in queue.head(self.size):
            if entry.request.id not in self.members and entry.hashes:
                self.members.add(entry.request.id)
                self.allocator.lookahead_enter(entry.request.namespace, entry.tokens, entry.hashes)

    def leave(self, entry: Waiting) -> None:
        if entry.request.id in self.members:
            self.members.discard(entry.request.id)
            self.allocator.lookahead_leave(entry.hashes)
