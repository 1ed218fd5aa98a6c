"""Schedulers by name: ``fcfs`` (TGI), ``lpm`` and ``dfs-weight`` (SGLang), ``qas`` (PRISM).

Every scheduler is a pure synchronous object implementing :class:`router_py.scheduling.interface.Scheduler`; time is
passed in. Besides the protocol they offer ``prefill_done(request_id)``: call it when a request's first token
comes back (its prompt KV is complete) to publish the prompt to the prefix cache at once rather than at release
(optional; QAS's in-batch dedup then releases the followers of a pioneer a step later instead of when the
pioneer finishes).

``SchedulerConfig.params`` keys (all optional; an unknown key is a ValueError):

==================================  =======  ==========================================================
key                                 default  meaning
==================================  =======  ==========================================================
qas_window                          32       waiting requests QAS ranks per step (the rest go FIFO after)
qas_max_bypass                      128      K: later arrivals that may be admitted before a waiting one
qas_max_wait_s                      5.0      T: after T seconds waiting, no later arrival goes first
qas_wait_factor                     1.0      age earlier, after this x the recent mean queue wait (<= T);
                                             0 = the fixed T only
qas_dedup                           1        pioneer-only admission of an uncached shared segment
qas_pioneer_weight                  0.0      weight of a pioneer's future reuse in the hot lane's ranking
lpm_fcfs_threshold                  128      lpm acts as fcfs past this many waiting (SGLang)
inbatch_check_threshold             32       in-batch dedup: only requests with <= this many cached tokens
inbatch_deprioritize_threshold      32       in-batch dedup: shared tokens that make a request a follower
lookahead_window                    4        lookahead-lru: next W waiting requests protected (PCR)
hotprefix_max_age                   8.0      hotprefix: clock value on access
hotprefix_decay_period              16.0     hotprefix: ticks per unit of clock decay
dart_heat_half_life                 3.0      tree heat (DART's tie-break): cache capacities of inserted
                                             blocks after which a past use counts half (also the half-life
                                             of segment popularity, in capacities of enqueued blocks)
dart_popularity_weight              4.0      weight of segment popularity in DART's tie-break; 0 = off
==================================  =======  ==========================================================
"""

from __future__ import annotations

from router_py.scheduling.queue_scheduler import QueueScheduler
from router_py.scheduling.dfs_weight import DfsWeightScheduler
from router_py.scheduling.fcfs import FcfsScheduler
from router_py.scheduling.lpm import LpmScheduler
from router_py.scheduling.qas import QasScheduler
from router_py.scheduling.interface import Scheduler, SchedulerConfig

SCHEDULERS: dict[str, type[QueueScheduler]] = {
    "fcfs": FcfsScheduler,
    "lpm": LpmScheduler,
    "dfs-weight": DfsWeightScheduler,
    "qas": QasScheduler,
}


PARAMS = frozenset(
    {
        "qas_window",
        "qas_max_bypass",
        "qas_max_wait_s",
        "qas_wait_factor",
        "qas_dedup",
        "qas_pioneer_weight",
        "lpm_fcfs_threshold",
        "inbatch_check_threshold",
        "inbatch_deprioritize_threshold",
        "lookahead_window",
        "hotprefix_max_age",
        "hotprefix_decay_period",
        "dart_heat_half_life",
        "dart_popularity_weight",
    }
)


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


__all__ = ["PARAMS", "SCHEDULERS", "QueueScheduler", "make_scheduler"]
