"""Where each cached block's KV lives below the device, and the copies that move it (TIERS-CONTRACT.md).

The device tier is the radix tree over the block pool, as without tiers. Below it, the host and disk tiers
hold blocks by chained hash (:class:`MetadataIndex`), each in a slot of its :class:`SlotPool`. The manager:

- demotes what the device evicts (:meth:`TierManager.evicted`, the tree's spill hook) or, write-through, what
  the device caches (:meth:`TierManager.stored`); a full host demotes its victim to disk first;
- finds a request's continuation below its device match (:meth:`TierManager.find`), pins it while an
  allocation copies it up (:meth:`TierManager.promoted`), hands its use count to the tree
  (:meth:`TierManager.carried_hits`) and drops the host copy once the tree holds the block again (exclusive
  policies);
- plans prefetch for waiting requests (disk -> host, :meth:`TierManager.plan_prefetch`);
- for periodic promotion (HotPrefix), remembers where each host run was cut off the tree and offers the hottest
  whole ones (:meth:`TierManager.hot_roots`); the allocator grafts them back (:meth:`TierManager.promoted_run`).

Copies wait in ``pending`` (with a sequence number) until an allocation or a prefetch plan takes them: a copy
out of a slot always precedes, in that order, the copy that overwrites the slot, and a freed device block is
only written by a forward after an allocation took it, which takes the pending copies first. A rolled-back
allocation puts its demotions back in sequence order. Hashes are Python's (signed); copies carry them as
unsigned 64-bit values (``h & MASK``), as the wire does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prism_cache.node import Node
from prism_cache.tiers.metadata_index import MetadataIndex
from prism_cache.tiers.placement import Order, make_placement
from prism_cache.tiers.slots import SlotPool
from prism_cache.tiers.types import BlockCopy, Tier, TierConfig

MASK = (1 << 64) - 1
Found = tuple[Tier, int, int]  # (tier, slot, hash) of a block found below the device
Pending = tuple[int, BlockCopy]  # (sequence number, copy)
Undo = tuple[Tier, int, float, bool]  # (tier, hash, hotness before, was prefetched) of one promotion


@dataclass
class TierCounters:
    """Blocks moved per direction (src, dst), prefetched blocks and those later promoted, failed copies (hits
    per tier are the scheduler's, capped like cache_len)."""

    moved: dict[tuple[Tier, Tier], int] = field(default_factory=dict)
    prefetched: int = 0
    prefetch_used: int = 0
    failed: int = 0


class TierManager:
    def __init__(
        self,
        config: TierConfig,
        queued: Callable[[int, int], int],
        heat_now: Callable[[], float] = float,
        block_bytes: int = 0,
        block_size: int = 1,
    ) -> None:
        self.config = config
        self.pools = {Tier.HOST: SlotPool(config.host_blocks), Tier.DISK: SlotPool(config.disk_blocks)}
        self.index = MetadataIndex(config.host_blocks, config.disk_blocks, block_bytes)
        self.orders: dict[Tier, Order] = {Tier.HOST: OrderedDict(), Tier.DISK: OrderedDict()}
        self.placement = make_placement(config.policy, queued, heat_now)
        self.pinned: dict[int, int] = {}  # hash -> pins (being promoted, or prefetched for a waiting request)
        self._pending: list[Pending] = []
        self._seq = 0
        self._prefetched: set[int] = set()
        self.counters = TierCounters()
        self.block_size = block_size
        # NOTE: with periodic promotion, where each run was cut off: run id -> (node it hung from, that node's
        # last hash then, the run's token ids, the run); what grafting it back into the tree needs
        self._anchors: dict[int, tuple[Node, int | None, tuple[int, ...], list[int]]] = {}

    # ---------------------------------------------------------------- copies
    def _emit(self, src: Tier, src_slot: int, dst: Tier, dst_slot: int, h: int) -> None:
        self._pending.append((self._seq, BlockCopy(src, src_slot, dst, dst_slot, h & MASK)))
        self._seq += 1
        key = (src, dst)
        self.counters.moved[key] = self.counters.moved.get(key, 0) + 1

    def take_pending(self) -> list[Pending]:
        out, self._pending = self._pending, []
        return out

    def put_back(self, pending: Sequence[Pending]) -> None:
        """Copies taken but never sent (a rolled-back allocation): back in sequence order."""
        if pending:
            self._pending = sorted([*pending, *self._pending], key=lambda p: p[0])

    # ---------------------------------------------------------------- placing blocks
    def _place(
        self, tier: Tier, h: int, hot: float, run: list[int] | None = None, offset: int = 0
    ) -> int | None:
        """A slot of ``tier`` for block ``h`` (registered in the index, in ``run`` at ``offset`` if given), or
        None when the policy declines. A full tier gives up a victim first (a host victim goes down to disk when
        the disk takes it)."""
        pool, place = self.pools[tier], self.placement
        if pool.capacity == 0 or not place.admit(hot):
            return None
        slot = pool.take()
        if slot is None:
            order = self.orders[tier]
            victim = place.victim(order, self.pinned)
            if victim is None or not place.replaces(hot, order[victim]):
                return None
            slot = self._drop(tier, victim, demote=True)
        self.index.tiers[tier].put(h, slot, hot, run=run, offset=offset)
        self.orders[tier][h] = hot
        return slot

    def _drop(self, tier: Tier, h: int, demote: bool = False) -> int:
        """Remove ``h`` from ``tier``; returns its slot, NOT given back to the pool (the caller reuses or gives
        it). With ``demote``, a host block first goes down to disk (when the disk takes it)."""
        hot = self.orders[tier].pop(h)
        slot = self.index.tiers[tier].drop(h)
        if tier == Tier.HOST:
            self._prefetched.discard(h)  # prefetched into the host and never used
        if demote and tier == Tier.HOST and h not in self.index.disk:
            disk_slot = self._place(Tier.DISK, h, hot)
            if disk_slot is not None:
                self._emit(Tier.HOST, slot, Tier.DISK, disk_slot, h)
        return slot

    def _down(self, src_slot: int, h: int, hot: float, run: list[int], offset: int) -> None:
        """Write device block ``src_slot`` (hash ``h``, ``run[offset]``) down to the host, or to disk without a
        host tier."""
        for tier in (Tier.HOST, Tier.DISK):
            if h in self.index.tiers[tier]:
                self.orders[tier].move_to_end(h)
                return
            if self.pools[tier].capacity:
                slot = self._place(tier, h, hot, run, offset)
                if slot is not None:
                    self._emit(Tier.DEVICE, src_slot, tier, slot, h)
                return

    def evicted(self, node: Node, keep: int) -> None:
        """The tree's spill hook: ``node`` is about to lose its blocks from ``keep`` on."""
        if self.placement.write_through:
            return
        hot = self.placement.hotness(node)
        run = node.hashes[keep:]
        for i, (b, h) in enumerate(zip(node.blocks[keep:], run)):
            self._down(b, h, hot, run, i)
        if self.placement.promote_period and id(run) in self.index.host.runs:
            anchor = node if keep else node.parent
            assert anchor is not None
            prev = anchor.hashes[keep - 1] if keep else (anchor.hashes[-1] if anchor.blocks else None)
            bs = self.block_size
            self._anchors[id(run)] = (anchor, prev, node.tokens[keep * bs : len(node.blocks) * bs], run)

    def hot_roots(
        self, leaf_ending: Callable[[int], Node | None]
    ) -> list[tuple[float, Node, tuple[int, ...], list[int]]]:
        """Whole host runs that no allocation is copying up and whose cut-off point is the end of a tree node
        (the node it was cut from, or else the leaf ``leaf_ending`` finds by that hash: a run grafted back
        before it), hottest first (their first block's hotness), as (hotness, node, token ids, hashes).
        Forgets runs no longer whole."""
        out = []
        runs, order = self.index.host.runs, self.orders[Tier.HOST]
        for rid, (anchor, prev, tokens, run) in list(self._anchors.items()):
            record = runs.get(rid)
            if record is None or record[1] < len(run):
                del self._anchors[rid]
                continue
            if (anchor.hashes[-1] if anchor.blocks else None) != prev:
                found = leaf_ending(prev) if prev is not None else None
                if found is None:
                    continue
                anchor = found
            if self.pinned.keys().isdisjoint(run):
                out.append((order[run[0]], anchor, tokens, run))
        out.sort(key=lambda item: -item[0])
        return out

    def promoted_run(self, run: list[int], device_blocks: Sequence[int]) -> None:
        """A whole host run was grafted back into the tree on ``device_blocks``: copy it up (pending, in order)
        and drop the host copies."""
        host = self.index.host
        for h, block in zip(run, device_blocks):
            self._emit(Tier.HOST, host.slot_of[h], Tier.DEVICE, block, h)
            self.pools[Tier.HOST].give(self._drop(Tier.HOST, h))
        self._anchors.pop(id(run), None)

    def served(self, hashes: Sequence[int]) -> None:
        """The device served these blocks: write-through policies refresh their lower copies' recency."""
        if self.placement.write_through:
            for tier in (Tier.HOST, Tier.DISK):
                order = self.orders[tier]
                for h in hashes:
                    if h in order:
                        order.move_to_end(h)

    def stored(self, blocks: Sequence[int], hashes: Sequence[int]) -> None:
        """Blocks entered the device tree (new to it): written down now by write-through policies, and
        dropped from the host by exclusive ones (the device holds them again)."""
        host = self.index.host
        if self.placement.write_through:
            run = list(hashes)
            for i, (b, h) in enumerate(zip(blocks, run)):
                self._down(b, h, 1.0, run, i)
        elif self.placement.exclusive:
            for h in hashes:
                if h in host and h not in self.pinned:
                    self.pools[Tier.HOST].give(self._drop(Tier.HOST, h))

    # ---------------------------------------------------------------- promotion
    def find(self, hashes: Sequence[int], start: int, end: int) -> list[Found]:
        """The blocks ``hashes[start:end]`` found below the device, as a run from ``start`` (fastest copy)."""
        n = self.index.prefix_run(hashes, start, end)
        out: list[Found] = []
        host, disk = self.index.host.slot_of, self.index.disk.slot_of
        for h in hashes[start : start + n]:
            slot = host.get(h)
            out.append((Tier.HOST, slot, h) if slot is not None else (Tier.DISK, disk[h], h))
        return out

    def pin(self, found: Sequence[Found]) -> None:
        pinned = self.pinned
        for _, _, h in found:
            pinned[h] = pinned.get(h, 0) + 1

    def unpin(self, found: Sequence[Found]) -> None:
        pinned = self.pinned
        for _, _, h in found:
            n = pinned.get(h, 0) - 1
            if n > 0:
                pinned[h] = n
            else:
                pinned.pop(h, None)  # also a pin copy_failed dropped

    def promoted(
        self, found: Sequence[Found], device_blocks: Sequence[int]
    ) -> tuple[list[BlockCopy], list[Undo]]:
        """Copies of the ``found`` blocks into ``device_blocks`` (fresh blocks of an allocation), each a use of
        the block; the found blocks stay pinned until :meth:`unpin`. Also what :meth:`unpromoted` needs to undo
        the uses (one :data:`Undo` per block)."""
        out, undo = [], []
        for (tier, slot, h), block in zip(found, device_blocks):
            out.append(BlockCopy(tier, slot, Tier.DEVICE, block, h & MASK))
            self.counters.moved[(tier, Tier.DEVICE)] = self.counters.moved.get((tier, Tier.DEVICE), 0) + 1
            order = self.orders[tier]
            was_prefetched = h in self._prefetched
            undo.append((tier, h, order[h], was_prefetched))
            order[h] = self.placement.hit(order[h])
            order.move_to_end(h)
            if was_prefetched:
                self._prefetched.discard(h)
                self.counters.prefetch_used += 1
        return out, undo

    def carried_hits(self, found: Sequence[Found]) -> dict[int, int]:
        """Hash -> the tree hits each promoted block still in its tier brings back
        (:meth:`Placement.carried_hits` of its hotness, the promotion's use included); read before
        :meth:`stored` drops the host copies."""
        out: dict[int, int] = {}
        for tier, _, h in found:
            hot = self.orders[tier].get(h)
            if hot is not None:
                out[h] = self.placement.carried_hits(hot)
        return out

    def unpromoted(self, undo: Sequence[Undo], sent: bool) -> None:
        """Promotions of a rolled-back allocation (:meth:`promoted`'s undo list): the blocks were not used, so
        a block still where it was found gets its hotness back, and a prefetched one its prefetched mark
        (``prefetch_used`` is decremented either way: a copy_failed may have dropped it since). ``sent``: the
        copies went to the shard (each failed one reported with :meth:`copy_failed`), so they stay moves;
        otherwise they are not moves. The recency the use gave stays, like the device match's touch."""
        moved = self.counters.moved
        for tier, h, hot, was_prefetched in undo:
            if not sent:
                moved[(tier, Tier.DEVICE)] -= 1
            if h in self.orders[tier]:
                self.orders[tier][h] = hot
                if was_prefetched and tier == Tier.HOST:
                    self._prefetched.add(h)
            if was_prefetched:
                self.counters.prefetch_used -= 1

    # ---------------------------------------------------------------- prefetch, faults
    def plan_prefetch(self, waiting: Sequence[tuple[list[int], int]]) -> list[BlockCopy]:
        """Disk -> host copies for the waiting requests given as (block hashes, device-cached blocks), in
        queue order (the caller passes its prefetch window). Returns every pending copy too, in order (the
        shard runs them with the prefetch, ahead of the forwards that need them)."""
        if self.pools[Tier.HOST].capacity and self.pools[Tier.DISK].capacity:
            planned: list[Found] = []
            for hashes, cached in waiting:
                found = self.find(hashes, cached, len(hashes))
                # NOTE: pinned until the whole window is planned: no victim of its own prefetch nor of a later
                # request's (else a full host trades the head's blocks for the tail's, and the next plan back)
                self.pin(found)
                planned += found
                for tier, slot, h in found:
                    if tier == Tier.DISK:
                        host_slot = self._place(Tier.HOST, h, self.orders[Tier.DISK][h])
                        if host_slot is None:
                            break
                        self._emit(Tier.DISK, slot, Tier.HOST, host_slot, h)
                        self._prefetched.add(h)
                        self.counters.prefetched += 1
            self.unpin(planned)
        return [c for _, c in self.take_pending()]

    def copy_failed(self, copy: BlockCopy) -> None:
        """The shard could not do ``copy``: its destination below the device is freed, and the block is
        treated as absent from its source tier (a miss from now on)."""
        self.counters.failed += 1
        for tier, slot in ((copy.dst_tier, copy.dst_slot), (copy.src_tier, copy.src_slot)):
            if tier == Tier.DEVICE:
                continue
            index = self.index.tiers[tier]
            h = index.hash_at[slot]
            if index.slot_of.get(h) == slot and h & MASK == copy.block_hash:
                self.pinned.pop(h, None)
                self.pools[tier].give(self._drop(tier, h))

    # ---------------------------------------------------------------- checks
    def check(self) -> None:
        """Per tier: free + used = capacity, index and order agree, every pin on a present block. Raises
        AssertionError."""
        for tier in (Tier.HOST, Tier.DISK):
            index = self.index.tiers[tier]
            self.pools[tier].check(set(index.slot_of.values()))
            assert len(set(index.slot_of.values())) == len(index), f"{tier.name}: two blocks share a slot"
            assert index.slot_of.keys() == self.orders[tier].keys(), f"{tier.name}: order out of date"
            members: dict[int, int] = {}
            for h, slot in index.slot_of.items():
                assert index.hash_at[slot] == h, f"{tier.name}: slot {slot} records another hash"
                rid = index.run_of[slot]
                if rid:
                    assert index.runs[rid][0][index.offset[slot]] == h, f"{tier.name}: run offset out of date"
                    members[rid] = members.get(rid, 0) + 1
            assert members == {rid: r[1] for rid, r in index.runs.items()}, f"{tier.name}: run counts"
        for h in self.pinned:
            assert h in self.index.host or h in self.index.disk, "a pinned block is in no tier"
        assert self._prefetched <= self.index.host.slot_of.keys(), "a prefetched mark on a block not in host"
