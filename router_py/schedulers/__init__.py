"""Schedulers by name: ``fcfs`` (TGI), ``lpm`` and ``dfs-weight`` (SGLang), ``qas`` (PRISM).

Every scheduler is a pure synchronous object implementing :class:`router_py.scheduling.Scheduler`; time is
passed in. Retention policy, block size and the rest come from :class:`SchedulerConfig`.
"""

from __future__ import annotations

from router_py.scheduling import Scheduler, SchedulerConfig
from router_py.schedulers.base import QueueScheduler
from router_py.schedulers.dfs_weight import DfsWeightScheduler
from router_py.schedulers.fcfs import FcfsScheduler
from router_py.schedulers.lpm import LpmScheduler
from router_py.schedulers.qas import QasScheduler

SCHEDULERS: dict[str, type[QueueScheduler]] = {
    "fcfs": FcfsScheduler,
    "lpm": LpmScheduler,
    "dfs-weight": DfsWeightScheduler,
    "qas": QasScheduler,
}


def make_scheduler(config: SchedulerConfig) -> Scheduler:
    """Build the scheduler ``config.scheduler`` names. Raises ValueError for an unknown scheduler or policy."""
    cls = SCHEDULERS.get(config.scheduler)
    if cls is None:
        raise ValueError(f"unknown scheduler {config.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    return cls(config)


__all__ = ["SCHEDULERS", "QueueScheduler", "make_scheduler"]
