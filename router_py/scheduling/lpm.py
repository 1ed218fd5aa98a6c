"""``lpm`` (SGLang): longest cached prefix first, with in-batch dedup; plain FCFS past 128 waiting.

Knobs: :class:`LpmParams` and the :mod:`dedup` thresholds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from prism_cache.params import parse_knobs
from router_py.scheduling.queue_scheduler import QueueScheduler
from router_py.scheduling.batch_builder import Limits
from router_py.scheduling.dedup import InBatchDedup, InBatchDedupParams
from router_py.scheduling.waiting import Waiting
from router_py.scheduling.interface import SchedulerConfig


@dataclass(frozen=True)
class LpmParams:
    """``lpm_*`` knobs."""

    PREFIX: ClassVar[str] = "lpm_"
    fcfs_threshold: int = 128  # plain FCFS past this many waiting (SGLang's switch-off; bounds a step's cost)


class LpmScheduler(QueueScheduler):
    name = "lpm"

    def __init__(self, config: SchedulerConfig) -> None:
        super().__init__(config)
        self.fcfs_threshold = parse_knobs(LpmParams, config.params).fcfs_threshold
        self.dedup = InBatchDedup(parse_knobs(InBatchDedupParams, config.params), config.block_size)

    def _order(self, now: float, limits: Limits) -> tuple[Iterable[Waiting], list[Waiting]]:
        if self.allocator is None or len(self.queue) > self.fcfs_threshold:
            return iter(self.queue), []
        ranked = sorted(self.queue, key=lambda e: (-self.cached_prefix(e), e.seq))
        return self.dedup.apply(ranked, self.cached_prefix), []
