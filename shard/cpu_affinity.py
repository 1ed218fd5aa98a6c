"""Which CPUs a CPU shard's step threads are pinned to, and the pinning itself (once, from the step thread).

With two busy threads on a two-core VM, Linux at times kept both on one core for tens of milliseconds while
the other core idled (a cold prefill of 30 ms took 45-80; docs/performance.md, session 13). Pinned, each of
torch's intra-op threads owns a core: thread i of the step thread's OpenMP team runs on ``cpus[i]``. Decode
steps use the first ``small`` of them, so the cores after those stay the router's. Several shards on one host
(tensor- or data-parallel ranks on CPU) each take their own run of CPUs, by ``slot``; a lone shard given fewer
threads than CPUs is left unpinned. ``PRISM_PIN_THREADS=0`` turns it off.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
ENV = "PRISM_PIN_THREADS"


def pin_cpus(threads: int, slot: int | None) -> tuple[tuple[int, ...], str]:
    """The CPUs for a team of ``threads`` of shard number ``slot`` among the launcher's shards on this host:
    the ``slot``-th run of ``threads`` CPUs among those allowed to the process. A lone shard (``slot`` None)
    is pinned only when its team takes every allowed CPU: with fewer threads (``--cpu-threads``), other
    processes of the host may be meant to use the rest, and a pinned team could not move away from them.
    Empty, with why, when off, not pinned, or the host has too few CPUs."""
    if os.environ.get(ENV, "1") == "0":
        return (), f"{ENV}=0"
    if not hasattr(os, "sched_getaffinity"):
        return (), "no sched_getaffinity on this platform"
    allowed = sorted(os.sched_getaffinity(0))
    if slot is None and threads != len(allowed):
        return (), f"not pinned: {threads} threads for {len(allowed)} CPUs"
    slot = slot or 0
    cpus = tuple(allowed[slot * threads:(slot + 1) * threads])
    if len(cpus) < threads:
        return (), f"{len(allowed)} CPUs allowed, too few for shard {slot}'s {threads} threads"
    return cpus, f"pinned to CPUs {','.join(map(str, cpus))} ({ENV}=0 turns it off)"


class TeamPinning:
    """Pins the step thread's OpenMP team to ``cpus`` at the first step whose team has ``len(cpus)``
    threads (libgomp reuses those threads for smaller teams, so the binding holds). Call from the step
    thread."""

    def __init__(self, cpus: tuple[int, ...]) -> None:
        self.cpus = cpus
        self.done = not cpus

    def maybe_pin(self, team: int) -> None:
        if self.done or team != len(self.cpus):
            return
        self.done = True
        from flash_kernels.backends.cpu_threads import pin_team

        pinned = pin_team(self.cpus)
        if pinned == len(self.cpus):
            log.info("step threads pinned to CPUs %s", ",".join(map(str, self.cpus)))
        else:
            log.warning("pinned %d of %d step threads (kernel extension unavailable or CPUs not allowed)",
                        pinned, len(self.cpus))
