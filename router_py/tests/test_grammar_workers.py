"""The grammar-check processes end with the router, however the router ends (here: SIGKILL, which runs no
cleanup of its own)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROUTER = (
    "import time\n"
    "from router_py.http import grammar\n"
    "grammar.start_workers()\n"
    "pool = grammar._pool()\n"
    "[f.result() for f in [pool.submit(int) for _ in range(grammar.WORKERS)]]\n"
    "print(' '.join(map(str, pool._processes)), flush=True)\n"
    "time.sleep(120)\n"
)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_check_processes_exit_when_the_router_is_killed() -> None:
    router = subprocess.Popen([sys.executable, "-c", ROUTER], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in router.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
    finally:
        os.kill(router.pid, signal.SIGKILL)
        router.wait()
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in workers if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"check processes {left} outlived the router"
