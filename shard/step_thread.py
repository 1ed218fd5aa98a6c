"""The one thread every step of the model runs on (forwards, warmup, the lookahead's chains, KV-tier loads
around a step).

libgomp keeps a team of worker threads for every thread that has run a parallel region. Once the process
holds more such threads than it has CPUs, every team's workers stop spinning between regions and sleep
(libgomp's throttled spin count), so each parallel region of a step pays a wake-up. Steps on asyncio's
default executor ran on whichever of its threads was free, so two teams existed: on the 2-core box a
2-thread prefill step took 17 ms instead of 11.7 ms (docs/performance.md). One thread, one team.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-step")


def run(fn: Callable[..., T], *args: object) -> asyncio.Future[T]:
    """``fn(*args)`` handed to the step thread now (FIFO behind what it was handed before); await the
    result. Call from the event loop's thread. As with ``asyncio.to_thread``, cancelling the awaiting
    caller does not stop ``fn``."""
    return asyncio.get_running_loop().run_in_executor(EXECUTOR, fn, *args)
