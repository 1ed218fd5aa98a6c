"""Waiting for the machine to go quiet before a measurement: a server that has just finished a load can keep
the cores busy for a while (vLLM's CPU build: about one core for about 0.9 s after its last response), and the
next point measured, on either server, would pay for it in its first requests' TTFT."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

WINDOW_S = 0.2  # one sample of the machine's CPU use
BUSY_MAX = 0.1  # quiet: at most this share of all cores busy over a window
LIMIT_S = 5.0  # give up waiting (a neighbour's load may never stop)


def cpu_times(stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(busy, total) jiffies of all cores since boot, from ``/proc/stat``; None where it cannot be read."""
    try:
        # user nice system idle iowait irq softirq steal (guest time is already in user and nice)
        fields = [int(v) for v in stat.read_text(encoding="ascii").split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def wait_quiet(
    read: Callable[[], tuple[int, int] | None] = cpu_times,
    sleep: Callable[[float], None] = time.sleep,
    window: float = WINDOW_S,
    busy_max: float = BUSY_MAX,
    limit: float = LIMIT_S,
) -> float:
    """Sleeps in ``window``-second samples until one sample has at most ``busy_max`` of the cores busy, or
    ``limit`` seconds went by; returns the seconds waited. Where ``read`` gives None (no /proc), one window."""
    waited, before = 0.0, read()
    while waited < limit:
        sleep(window)
        waited += window
        after = read()
        if before is None or after is None:
            return waited
        busy, total = after[0] - before[0], after[1] - before[1]
        if total > 0 and busy / total <= busy_max:
            return waited
        before = after
    return waited
