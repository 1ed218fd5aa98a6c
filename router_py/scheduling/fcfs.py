"""``fcfs``: TGI's queue, first come first served (the admission loop in arrival order)."""

from __future__ import annotations

from router_py.scheduling.queue_scheduler import QueueScheduler


class FcfsScheduler(QueueScheduler):
    name = "fcfs"
