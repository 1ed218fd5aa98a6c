"""The metadata index of the tiers below the device (the IBM study's KV-cache metadata store): chained block
hash -> (tier, location, size, checksum, hotness).

Per tier, a dict maps a block hash to its slot, and the other fields live in flat arrays indexed by slot (a few
bytes each, no object per entry). Chained hashes make one probe answer a whole prefix in the common case: the
hash of a prompt's block i names its first i + 1 blocks, so :meth:`MetadataIndex.prefix_run` probes the first
and last blocks of the range, and walks block by block only when the run is broken (a tier evicted a block in
the middle of a chain).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from prism_cache.tiers.types import Tier


@dataclass(frozen=True, slots=True)
class Entry:
    tier: Tier
    slot: int
    size: int  # bytes
    checksum: int  # what the shard reported for the stored copy (0: none reported)
    hotness: float


class TierIndex:
    """The entries of one tier: ``slot_of`` (hash -> slot) and per-slot arrays. ``slot_of`` iterates in no
    useful order (policies keep their own orders)."""

    def __init__(self, tier: Tier, capacity: int, block_bytes: int = 0) -> None:
        self.tier = tier
        self.block_bytes = block_bytes
        self.slot_of: dict[int, int] = {}
        self.hash_at = array("q", bytes(8 * capacity))
        self.checksum = array("I", bytes(4 * capacity))
        self.hotness = array("f", bytes(4 * capacity))

    def __len__(self) -> int:
        return len(self.slot_of)

    def __contains__(self, h: int) -> bool:
        return h in self.slot_of

    def put(self, h: int, slot: int, hotness: float = 0.0, checksum: int = 0) -> None:
        """Raises ValueError if ``h`` is already in this tier."""
        if h in self.slot_of:
            raise ValueError(f"block {h:#x} is already in tier {self.tier.name}")
        self.slot_of[h] = slot
        self.hash_at[slot] = h
        self.checksum[slot] = checksum
        self.hotness[slot] = hotness

    def drop(self, h: int) -> int:
        """Remove ``h``; returns its slot. Raises KeyError if absent."""
        return self.slot_of.pop(h)

    def entry(self, h: int) -> Entry | None:
        slot = self.slot_of.get(h)
        if slot is None:
            return None
        return Entry(self.tier, slot, self.block_bytes, self.checksum[slot], self.hotness[slot])


class MetadataIndex:
    """The host and disk tiers' entries. A block may be in both (disk copies are kept when a block moves up)."""

    def __init__(self, host_blocks: int, disk_blocks: int, block_bytes: int = 0) -> None:
        self.host = TierIndex(Tier.HOST, host_blocks, block_bytes)
        self.disk = TierIndex(Tier.DISK, disk_blocks, block_bytes)
        self.tiers = {Tier.HOST: self.host, Tier.DISK: self.disk}

    def lookup(self, h: int) -> Entry | None:
        """The fastest copy of ``h`` (host before disk), or None."""
        return self.host.entry(h) or self.disk.entry(h)

    def prefix_run(self, hashes: Sequence[int], start: int, end: int) -> int:
        """How many of ``hashes[start:end]``, from ``start`` on, are each in the host or the disk tier.

        Two probes when the run is whole or absent (the sequential case the study found for most accesses);
        otherwise a walk to the first missing block."""
        if start >= end:
            return 0
        host, disk = self.host.slot_of, self.disk.slot_of
        h = hashes[start]
        if h not in host and h not in disk:
            return 0
        last = hashes[end - 1]
        if last in host or last in disk:
            run = hashes[start:end]
            if all(map(host.__contains__, run)) or all(map(disk.__contains__, run)):
                return end - start
        i = start + 1
        while i < end and (hashes[i] in host or hashes[i] in disk):
            i += 1
        return i - start
