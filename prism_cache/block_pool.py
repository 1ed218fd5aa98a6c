"""Fixed pool of KV block ids with reference counts and an O(1) free list.

Block 0 is reserved (TGI keeps it for the shard's health probe) and is never handed out. Every other block is
either free (reference count 0, on the free list) or held by one or more owners: the radix tree holds one reference
per cached block, and each live allocation holds one reference per block of its table (its matched prefix included).
"""

from __future__ import annotations


class BlockPool:
    """Block ids ``1 .. num_blocks - 1``; ``allocate``/``ref``/``unref`` are O(1) per block.

    Invariants (checked by :meth:`check_integrity`): a block is on the free list exactly when its reference count
    is 0; no block is on the free list twice; block 0 is never free and never referenced.
    """

    def __init__(self, num_blocks: int) -> None:
        """Args: num_blocks: total blocks including the reserved block 0. Raises ValueError if < 1."""
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        # NOTE: TGI's free list starts as 1..n and pops from the tail; we do the same so block ids match.
        self._free: list[int] = list(range(1, num_blocks))
        self._refs: list[int] = [0] * num_blocks

    @property
    def free_count(self) -> int:
        return len(self._free)

    @property
    def usable_blocks(self) -> int:
        """Blocks that can ever be handed out (all but block 0)."""
        return self.num_blocks - 1

    def allocate(self, n: int) -> list[int] | None:
        """Take ``n`` free blocks, each with reference count 1, or None (and take nothing) if fewer are free."""
        if n > len(self._free):
            return None
        if n <= 0:
            return []
        blocks = self._free[-n:]
        del self._free[-n:]
        refs = self._refs
        for b in blocks:
            refs[b] = 1
        return blocks

    def ref(self, block: int) -> None:
        """Add a reference to a held block. Raises ValueError if the block is free or reserved."""
        if self._refs[block] <= 0:
            raise ValueError(f"block {block} is not held")
        self._refs[block] += 1

    def ref_all(self, blocks: list[int]) -> None:
        """:meth:`ref` each block."""
        refs = self._refs
        for b in blocks:
            if refs[b] <= 0:
                raise ValueError(f"block {b} is not held")
            refs[b] += 1

    def unref(self, block: int) -> bool:
        """Drop one reference; the block goes back to the free list at 0. Returns True if it was freed.
        Raises ValueError if the block holds no reference (a reference count never goes negative)."""
        count = self._refs[block] - 1
        if count < 0 or block == 0:
            raise ValueError(f"block {block} has no reference to drop")
        self._refs[block] = count
        if count == 0:
            self._free.append(block)
            return True
        return False

    def unref_all(self, blocks: list[int] | tuple[int, ...]) -> int:
        """:meth:`unref` each block; returns how many were freed."""
        refs, free, freed = self._refs, self._free, 0
        for b in blocks:
            count = refs[b] - 1
            if count < 0 or b == 0:
                raise ValueError(f"block {b} has no reference to drop")
            refs[b] = count
            if count == 0:
                free.append(b)
                freed += 1
        return freed

    def refcount(self, block: int) -> int:
        return self._refs[block]

    def check_integrity(self) -> None:
        """Raises AssertionError if the free list and the reference counts disagree."""
        free = set(self._free)
        assert len(free) == len(self._free), "a block is on the free list twice"
        assert 0 not in free and self._refs[0] == 0, "block 0 must stay reserved"
        for b in range(1, self.num_blocks):
            assert self._refs[b] >= 0, f"block {b} has a negative reference count"
            assert (self._refs[b] == 0) == (b in free), f"block {b}: refcount {self._refs[b]} vs free list"
