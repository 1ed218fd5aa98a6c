"""bench.live_threads' /proc readers (the live measurement itself needs a server: see docs/performance.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.live_threads import descendants, thread_cpu


def test_thread_cpu_counts_this_threads_work_and_descendants_include_children() -> None:
    me = (os.getpid(), os.getpid())
    before = thread_cpu([os.getpid()])[me][1]
    end = time.thread_time() + 0.1
    while time.thread_time() < end:
        pass
    name, after = thread_cpu([os.getpid()])[me]
    assert name.startswith("client/") and after - before >= 0.05
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        assert child.pid in descendants(os.getpid())
    finally:
        child.kill()
        child.wait()
