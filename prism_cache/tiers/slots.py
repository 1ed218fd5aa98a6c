"""A fixed pool of slots of one tier below the device (host rows, disk file slots): an O(1) free list."""

from __future__ import annotations


class SlotPool:
    """Slots ``0 .. capacity - 1``; each is free or used. Invariant (:meth:`check`): free + used = capacity,
    no slot free twice."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._free = list(range(capacity - 1, -1, -1))  # pops slot 0 first

    @property
    def free_count(self) -> int:
        return len(self._free)

    def take(self) -> int | None:
        """A free slot, or None when the pool is full."""
        return self._free.pop() if self._free else None

    def give(self, slot: int) -> None:
        self._free.append(slot)

    def check(self, used: set[int]) -> None:
        """Raises AssertionError unless ``used`` (the slots an index holds) and the free list partition the
        pool."""
        free = set(self._free)
        assert len(free) == len(self._free), "a slot is free twice"
        assert not (free & used), "a slot is both free and used"
        assert len(free) + len(used) == self.capacity, "free + used != capacity"
        assert all(0 <= s < self.capacity for s in used), "slot out of range"
