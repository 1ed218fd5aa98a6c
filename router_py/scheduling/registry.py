"""Schedulers by name: ``fcfs`` (TGI), ``lpm`` and ``dfs-weight`` (SGLang), ``qas`` (PRISM).

Every scheduler is a pure synchronous object implementing :class:`router_py.scheduling.interface.Scheduler`;
time is passed in. Besides the protocol they offer ``prefill_done(request_id)``: call it when a request's first token
comes back (its prompt KV is complete) to publish the prompt to the prefix cache at once rather than at release
(optional; QAS's in-batch dedup then releases the followers of a pioneer a step later instead of when the
pioneer finishes).

``SchedulerConfig.params`` holds the flat ``--scheduler-param`` knobs; each key is ``PREFIX + field`` of one
of the typed knob classes in :data:`KNOBS`, where its default and meaning are documented (an unknown key is a
ValueError): :class:`~router_py.scheduling.qas.QasParams`, :class:`~router_py.scheduling.lpm.LpmParams`,
:class:`~router_py.scheduling.dedup.InBatchDedupParams`,
:class:`~router_py.scheduling.lookahead.LookaheadParams`, and the cache policies'
:data:`prism_cache.policies.POLICY_KNOBS`.
"""

from __future__ import annotations

from prism_cache.params import knob_keys
from prism_cache.policies import POLICY_KNOBS
from router_py.scheduling.dedup import InBatchDedupParams
from router_py.scheduling.dfs_weight import DfsWeightScheduler
from router_py.scheduling.fcfs import FcfsScheduler
from router_py.scheduling.interface import Scheduler, SchedulerConfig
from router_py.scheduling.lookahead import LookaheadParams
from router_py.scheduling.lpm import LpmParams, LpmScheduler
from router_py.scheduling.qas import QasParams, QasScheduler
from router_py.scheduling.queue_scheduler import QueueScheduler

SCHEDULERS: dict[str, type[QueueScheduler]] = {
    "fcfs": FcfsScheduler,
    "lpm": LpmScheduler,
    "dfs-weight": DfsWeightScheduler,
    "qas": QasScheduler,
}


KNOBS = (QasParams, LpmParams, InBatchDedupParams, LookaheadParams, *POLICY_KNOBS)
PARAMS = knob_keys(KNOBS)


def make_scheduler(config: SchedulerConfig) -> Scheduler:
    """Build the scheduler ``config.scheduler`` names. Raises ValueError for an unknown scheduler, policy or
    params key."""
    cls = SCHEDULERS.get(config.scheduler)
    if cls is None:
        raise ValueError(f"unknown scheduler {config.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    unknown = set(config.params) - PARAMS
    if unknown:
        raise ValueError(f"unknown scheduler params {sorted(unknown)}; known: {', '.join(sorted(PARAMS))}")
    return cls(config)


__all__ = ["KNOBS", "PARAMS", "SCHEDULERS", "QueueScheduler", "make_scheduler"]
