"""``fcfs``: TGI's queue, first come first served (the admission loop in arrival order)."""

from __future__ import annotations

from router_py.schedulers.base import QueueScheduler


class FcfsScheduler(QueueScheduler):
    name = "fcfs"
