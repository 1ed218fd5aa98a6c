"""HotPrefix (Li et al., PACMMOD 2025) GPU eviction: lowest ``(frequency + clock) / length`` first.

The clock is set to ``max_age`` on access and loses one unit every ``decay_period`` ticks (computed lazily from
the node's last access, so no periodic sweep is needed). Neither value is in a reachable source: both are
knobs (:class:`HotPrefixParams`). Length is in blocks; ties go to the older node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from prism_cache.policies.base import Key

if TYPE_CHECKING:
    from prism_cache.demand import DemandTable
    from prism_cache.node import Node


@dataclass(frozen=True)
class HotPrefixParams:
    """``hotprefix_*`` knobs."""

    PREFIX: ClassVar[str] = "hotprefix_"
    max_age: float = 8.0  # the clock's value on access
    decay_period: float = 16.0  # ticks per unit of clock decay (the tree ticks about twice per request)


class HotPrefixPolicy:
    name = "hotprefix"
    stable_keys = False  # the clock decays as the tree's tick advances

    def __init__(
        self, max_age: float = HotPrefixParams.max_age, decay_period: float = HotPrefixParams.decay_period
    ) -> None:
        if max_age < 0 or decay_period <= 0:
            raise ValueError("hotprefix_max_age must be >= 0 and hotprefix_decay_period > 0")
        self.max_age = max_age
        self.decay_period = decay_period

    def clock(self, node: Node, tick: int) -> float:
        return max(0.0, self.max_age - (tick - node.last_access) // self.decay_period)

    def demand_tables(self) -> tuple[DemandTable, ...]:
        return ()

    def key(self, node: Node, n_blocks: int, tick: int) -> Key:
        return ((node.hits + self.clock(node, tick)) / n_blocks, node.last_access)
