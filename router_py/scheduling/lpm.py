"""``lpm`` (SGLang): longest cached prefix first, with in-batch dedup; plain FCFS past 128 waiting.

Parameters: ``lpm_fcfs_threshold`` (default 128, SGLang's switch-off; it also bounds the per-step cost) and
the :mod:`dedup` thresholds.
"""

from __future__ import annotations

from collections.abc import Iterable

from router_py.scheduling.queue_scheduler import QueueScheduler
from router_py.scheduling.batch_builder import Limits
from router_py.scheduling.dedup import InBatchDedup
from router_py.scheduling.waiting import Waiting
from router_py.scheduling.interface import SchedulerConfig


class LpmScheduler(QueueScheduler):
    name = "lpm"

    def __init__(self, config: SchedulerConfig) -> None:
        super().__init__(config)
        self.fcfs_threshold = int(config.params.get("lpm_fcfs_threshold", 128))
        self.dedup = InBatchDedup(config.params, config.block_size)

    def _order(self, now: float, limits: Limits) -> tuple[Iterable[Waiting], list[Waiting]]:
        if self.allocator is None or len(self.queue) > self.fcfs_threshold:
            return iter(self.queue), []
        ranked = sorted(self.queue, key=lambda e: (-self.cached_prefix(e), e.seq))
        return self.dedup.apply(ranked, self.cached_prefix), []
