"""The metadata index of the tiers below the device (the IBM study's KV-cache metadata store): chained block
hash -> (tier, location, size, checksum, hotness).

Per tier, a dict maps a block hash to its slot, and the other fields live in flat arrays indexed by slot (a few
bytes each, no object per entry). Lookups go one *run* at a time rather than one block at a time, as the study
found most accesses sequential: blocks that enter a tier together as consecutive blocks of one chain (a node's
evicted tail) share a run, which keeps their hashes in order and a count of its members still present. A
prefix lookup probes the dict once per run: while the run is whole, the prompt's next hashes are compared with
the run's in one list comparison (chained hashes name their whole prefix, so equal hashes mean the same
blocks, and two chains that differ once differ from there on). A broken run (a member evicted) is walked block
by block.

Every entry that enters or leaves a tier goes through :meth:`TierIndex.put` / :meth:`TierIndex.drop`, so that
is where a watching :class:`CacheObserver` hears of tier copies (:meth:`MetadataIndex.watch`).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prism_cache.tiers.types import Tier

if TYPE_CHECKING:
    from prism_cache.observer import CacheObserver


@dataclass(frozen=True, slots=True)
class Entry:
    tier: Tier
    slot: int
    size: int  # bytes
    checksum: int  # what the shard reported for the stored copy (0: none reported)
    hotness: float


class TierIndex:
    """The entries of one tier: ``slot_of`` (hash -> slot), per-slot arrays, and the runs (id -> [hashes in
    chain order, members present]); slot fields: ``run_of`` (0: in no run) and ``offset`` in it."""

    def __init__(self, tier: Tier, capacity: int, block_bytes: int = 0) -> None:
        self.tier = tier
        self.block_bytes = block_bytes
        self.slot_of: dict[int, int] = {}
        self.hash_at = array("q", bytes(8 * capacity))
        self.checksum = array("I", bytes(4 * capacity))
        self.hotness = array("f", bytes(4 * capacity))
        self.run_of = array("q", bytes(8 * capacity))
        self.offset = array("I", bytes(4 * capacity))
        self.runs: dict[int, list] = {}  # run id -> [chain hashes, members present]
        self.observer: CacheObserver | None = None  # told of every put and drop (KV cache events)

    def __len__(self) -> int:
        return len(self.slot_of)

    def __contains__(self, h: int) -> bool:
        return h in self.slot_of

    def put(
        self,
        h: int,
        slot: int,
        hotness: float = 0.0,
        checksum: int = 0,
        run: list[int] | None = None,
        offset: int = 0,
    ) -> None:
        """Register ``h`` at ``slot``; ``run``: the chain it entered with (``run[offset] == h``; pass the same
        list object for every member). Raises ValueError if ``h`` is already in this tier."""
        if h in self.slot_of:
            raise ValueError(f"block {h:#x} is already in tier {self.tier.name}")
        self.slot_of[h] = slot
        self.hash_at[slot] = h
        self.checksum[slot] = checksum
        self.hotness[slot] = hotness
        rid = 0
        if run is not None:
            rid = id(run)  # NOTE: unique while the run is kept (it is, while a member is present)
            record = self.runs.get(rid)
            if record is None:
                record = self.runs[rid] = [run, 0]
            record[1] += 1
            self.offset[slot] = offset
        self.run_of[slot] = rid
        if self.observer is not None:
            self.observer.tier_stored(self.tier, h)

    def drop(self, h: int) -> int:
        """Remove ``h``; returns its slot. Raises KeyError if absent."""
        slot = self.slot_of.pop(h)
        rid = self.run_of[slot]
        if rid:
            record = self.runs[rid]
            record[1] -= 1
            if not record[1]:
                del self.runs[rid]
        if self.observer is not None:
            self.observer.tier_removed(self.tier, h)
        return slot

    def entry(self, h: int) -> Entry | None:
        slot = self.slot_of.get(h)
        if slot is None:
            return None
        return Entry(self.tier, slot, self.block_bytes, self.checksum[slot], self.hotness[slot])

    def covers(self, hashes: Sequence[int], pos: int, end: int) -> int:
        """How many of ``hashes[pos:end]`` from ``pos`` on this tier holds as part of ``hashes[pos]``'s run
        (1 if that run is broken; 0 if ``hashes[pos]`` is absent). One dict probe."""
        slot = self.slot_of.get(hashes[pos])
        if slot is None:
            return 0
        record = self.runs.get(self.run_of[slot])
        if record is None or record[1] < len(record[0]):
            return 1
        chain, off = record[0], self.offset[slot]
        n = min(len(chain) - off, end - pos)
        if chain[off : off + n] == hashes[pos : pos + n]:
            return n
        lo, hi = 1, n - 1  # the chains agree at 0 and not at n - 1: binary search where they part
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if chain[off + mid - 1] == hashes[pos + mid - 1]:
                lo = mid
            else:
                hi = mid - 1
        return lo


class MetadataIndex:
    """The host and disk tiers' entries. A block may be in both (disk copies are kept when a block moves up)."""

    def __init__(self, host_blocks: int, disk_blocks: int, block_bytes: int = 0) -> None:
        self.host = TierIndex(Tier.HOST, host_blocks, block_bytes)
        self.disk = TierIndex(Tier.DISK, disk_blocks, block_bytes)
        self.tiers = {Tier.HOST: self.host, Tier.DISK: self.disk}

    def watch(self, observer: CacheObserver | None) -> None:
        """Tell ``observer`` of every entry put in or dropped from either tier (None: nobody watches)."""
        self.host.observer = self.disk.observer = observer

    def lookup(self, h: int) -> Entry | None:
        """The fastest copy of ``h`` (host before disk), or None."""
        return self.host.entry(h) or self.disk.entry(h)

    def prefix_run(self, hashes: Sequence[int], start: int, end: int) -> int:
        """How many of ``hashes[start:end]``, from ``start`` on, are each in the host or the disk tier: one
        probe per whole run met (see the module docstring)."""
        pos, host, disk = start, self.host, self.disk
        while pos < end:
            n = host.covers(hashes, pos, end) or disk.covers(hashes, pos, end)
            if not n:
                break
            pos += n
        return pos - start
