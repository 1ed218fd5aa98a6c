"""Which chain each cached block belongs to, for the events of its tier copies.

The tier index knows a block only by its chained hash, but a ``BlockStored`` names the block's parent hash
and token ids too. Those came with the run the tree stored the block in (its GPU ``BlockStored``), so the
collector keeps, for every block some medium holds, a reference to that run, and turns a step's tier copies
into events from it when the step ends. Costs: one C-level dict update per stored run (the store path, every
prefill); per tier copy taken or given up, a dict update; the events are cut per stretch of a run (one slice
comparison), not per block, where the copies of one chain came in order (a demoted node's tail)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import repeat

from prism_cache.tiers.types import Tier

Run = tuple[str, int | None, tuple[int, ...], tuple[int, ...]]  # (namespace, parent, hashes, tokens)
# ("stored", namespace, parent, hashes, tokens, medium), the wire's raw BlockStored
Stored = tuple[str, str, int | None, tuple[int, ...], tuple[int, ...], str]


def lone_copy(h: int, medium: str) -> Stored:
    """The ``BlockStored`` of a copy whose chain is unknown: the hash alone, as vLLM's offloading publishes
    one (no parent, no tokens)."""
    return ("stored", "", None, (h,), (), medium)


class Chains:
    """hash -> the stored run of every block the device holds (``_device``) or that left the device while a
    tier may hold it (``_below``); ``_tiers``: hash -> bit mask of the tiers holding a copy. A block that left
    a medium is forgotten at :meth:`forget` (the end of the step) if no tier holds it then: within a step a
    host victim leaves the host before it takes its disk slot, and a copy taken and given up again still needs
    its chain for its ``BlockStored``."""

    def __init__(self) -> None:
        self._device: dict[int, Run] = {}
        self._below: dict[int, Run | None] = {}  # None: a block the device never reported (ignored)
        self._tiers: dict[int, int] = {}
        self._left: list[int] = []

    def stored(self, run: Run) -> None:
        self._device.update(zip(run[2], repeat(run)))  # NOTE: the latest run a block came in

    def removed(self, hashes: Sequence[int]) -> None:
        """The device evicted these blocks: kept below until :meth:`forget` (a tier may have taken a copy)."""
        pop: Callable[[int, None], Run | None] = self._device.pop
        self._below.update(zip(hashes, map(pop, hashes, repeat(None))))
        self._left += hashes

    def tier_stored(self, tier: Tier, h: int) -> None:
        self._tiers[h] = self._tiers.get(h, 0) | 1 << tier

    def tier_removed(self, tier: Tier, h: int) -> None:
        mask = self._tiers.pop(h, 0) & ~(1 << tier)
        if mask:
            self._tiers[h] = mask
        self._left.append(h)

    def events(self, hashes: Sequence[int], medium: str) -> list[Stored]:
        """``BlockStored`` events of ``medium`` for copies of these blocks, in this order: one per stretch
        that continues one stored run (a block whose chain is unknown goes out alone, without parent and
        tokens)."""
        out: list[Stored] = []
        k = 0
        while k < len(hashes):
            run = self._device.get(hashes[k]) or self._below.get(hashes[k])
            if run is None:
                out.append(lone_copy(hashes[k], medium))
                k += 1
                continue
            namespace, parent, chain, tokens = run
            i = chain.index(hashes[k])
            n = _common(chain, i, hashes, k)
            bs = len(tokens) // len(chain)
            parent = parent if i == 0 else chain[i - 1]
            out.append(("stored", namespace, parent, chain[i : i + n], tokens[i * bs : (i + n) * bs], medium))
            k += n
        return out

    def forget(self) -> None:
        """Drop what is kept of the blocks that left a medium since the last call and are in no tier now."""
        tiers, below = self._tiers, self._below
        for h in self._left:
            if h not in tiers:
                below.pop(h, None)
        self._left.clear()

    def clear(self) -> None:
        for kept in (self._device, self._below, self._tiers):
            kept.clear()
        self._left.clear()

    def kept(self) -> set[int]:
        """Every hash a run is kept for; after :meth:`forget`, exactly the blocks some medium holds."""
        return self._device.keys() | self._below.keys()


def _common(chain: tuple[int, ...], i: int, hashes: Sequence[int], k: int) -> int:
    """How many of ``hashes[k:]`` continue ``chain`` from ``chain[i]`` (which equals ``hashes[k]``)."""
    n = min(len(chain) - i, len(hashes) - k)
    if chain[i : i + n] == tuple(hashes[k : k + n]):
        return n  # NOTE: the usual case, one C-level comparison
    m = 1
    while chain[i + m] == hashes[k + m]:
        m += 1
    return m
