"""Placement policies for the tiers below the device: what a device eviction demotes, what a full tier gives up,
and whether a block is written down as soon as the device caches it.

- ``dart``: a device eviction demotes every block (demote, not drop); a full tier gives up the coldest (decayed
  heat) of its oldest ``SAMPLE`` entries that no waiting request needs; write-back, and a host copy moves up on
  use (exclusive).
- ``hotprefix``: only blocks used at least ``threshold`` times are admitted; a full tier gives up the coldest of
  its oldest ``SAMPLE`` entries, and only for a hotter block; every ``promote_period`` batches the hottest host
  runs swap with colder device leaves (:meth:`RadixAllocator.promote_hot`).
- ``lru-offload``: write-through (vLLM's CPU offload, SGLang HiCache): every block is written down when the
  device caches it; a full tier gives up its least recent entry; copies stay inclusive.

Each tier keeps an order (an ``OrderedDict`` hash -> hotness, least recent first) that the manager updates on
every put, hit and drop; policies only read it. Hotness is a block's use count (the node's hits + 1 at
demotion, +1 per later hit from the tier), and a block promoted back into the tree (on use or periodically)
hands it back as the node's hits (:meth:`Placement.carried_hits`), so a hot prefix stays hot across trips;
DART's is the node's decayed heat (:mod:`prism_cache.decay`, log form, so values taken at different times
compare), one use added per hit from the tier. LRU write-through also refreshes a block's lower copies when
the device serves it (one recency for all tiers, as HiCache).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Container

from prism_cache.decay import add_use
from prism_cache.node import Node
from prism_cache.tiers.types import TIER_POLICIES

Order = OrderedDict[int, float]
SAMPLE = 32  # entries a victim search looks at (from the least recent)


class Placement:
    """Write-back LRU: the base the others refine. ``exclusive``: a host copy is dropped once its block is
    back on the device (the tiers then add capacity instead of duplicating it)."""

    name = "lru"
    write_through = False
    exclusive = True
    promote_period = 0  # batches between periodic promotions of hot host runs (0: promotion on use only)

    def hotness(self, node: Node) -> float:
        return float(node.hits + 1)

    def hit(self, hotness: float) -> float:
        """The hotness after one more use."""
        return hotness + 1.0

    def carried_hits(self, hotness: float) -> int:
        """The tree hits a block of this hotness brings back to the device (its uses but the one that cached
        it: a node's hotness is its hits + 1), so that its next demotion sees the same count."""
        return max(0, int(hotness) - 1)

    def admit(self, hotness: float) -> bool:
        """Whether a block of this hotness may take a slot at all."""
        return True

    def replaces(self, hotness: float, victim_hotness: float) -> bool:
        """Whether a block of this hotness may push ``victim`` out of a full tier."""
        return True

    def victim(self, order: Order, pinned: Container[int]) -> int | None:
        """The entry a full tier gives up (never a pinned one), or None."""
        for h in order:
            if h not in pinned:
                return h
        return None


class LruOffload(Placement):
    """Write-through offload with LRU in every tier (vLLM's CPU offload, SGLang HiCache's default)."""

    name = "lru-offload"
    write_through = True
    exclusive = False


class DartPlacement(Placement):
    """Demote instead of drop; a full tier gives up the coldest of its oldest entries that no waiting request
    covers (the queued demand DART already counts), falling back to the least recent."""

    name = "dart"

    def __init__(self, queued: Callable[[int, int], int], heat_now: Callable[[], float]) -> None:
        self._queued = queued
        self._heat_now = heat_now

    def hotness(self, node: Node) -> float:
        return node.heat

    def hit(self, hotness: float) -> float:
        return add_use(hotness, self._heat_now())

    def carried_hits(self, hotness: float) -> int:
        # NOTE: DART's hotness is decayed heat, not a use count: no hits to hand back (docs/kv-tiers.md)
        return 0

    def victim(self, order: Order, pinned: Container[int]) -> int | None:
        first, best, best_hot = None, None, 0.0
        for i, (h, hot) in enumerate(order.items()):
            if h in pinned:
                continue
            if first is None:
                first = h
            if not self._queued(h, 0) and (best is None or hot < best_hot):
                best, best_hot = h, hot
            if i >= SAMPLE:
                break
        return best if best is not None else first


class HotPrefixPlacement(Placement):
    """HotPrefix's selective admission: only blocks used at least ``threshold`` times enter a tier, and a full
    tier replaces its coldest (sampled) entry only with a hotter block."""

    name = "hotprefix"
    promote_period = 16

    def __init__(self, threshold: float = 2.0) -> None:
        self.threshold = threshold

    def admit(self, hotness: float) -> bool:
        return hotness >= self.threshold

    def replaces(self, hotness: float, victim_hotness: float) -> bool:
        return hotness > victim_hotness

    def victim(self, order: Order, pinned: Container[int]) -> int | None:
        best, best_hot = None, 0.0
        for i, (h, hot) in enumerate(order.items()):
            if h in pinned:
                continue
            if best is None or hot < best_hot:
                best, best_hot = h, hot
            if i >= SAMPLE:
                break
        return best


def make_placement(name: str, queued: Callable[[int, int], int], heat_now: Callable[[], float]) -> Placement:
    """Raises ValueError for an unknown name."""
    if name == "dart":
        return DartPlacement(queued, heat_now)
    if name == "hotprefix":
        return HotPrefixPlacement()
    if name == "lru-offload":
        return LruOffload()
    raise ValueError(f"unknown tier policy {name!r}; expected one of {', '.join(TIER_POLICIES)}")
