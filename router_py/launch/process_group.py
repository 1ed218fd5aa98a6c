"""The launcher's children: start them, notice when one dies, stop them all in reverse order.

Children run in their own session (a terminal's Ctrl-C reaches only the launcher, which then stops them in
order) and get SIGTERM if the launcher itself dies (Linux parent-death signal), so none is left behind.
"""

from __future__ import annotations

import ctypes
import logging
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from router_py import env

log = logging.getLogger("router_py.launcher")

PR_SET_PDEATHSIG = 1
GRACE_S = env.graceful_termination_timeout_s()


def executable(name: str) -> str:
    """A console script of this installation (beside the running Python), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()


class ProcessGroup:
    def __init__(self) -> None:
        self.children: list[Child] = []
        self.stopping = False

    def spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> Child:
        log.debug("spawning %s: %s", name, " ".join(cmd))
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent)
        child = Child(name, proc)
        self.children.append(child)
        return child

    def request_stop(self, signum: int) -> None:
        """Signal handler: ask :meth:`supervise` (or the readiness wait) to return."""
        log.info("received %s, shutting down", signal.Signals(signum).name)
        self.stopping = True

    def first_exited(self) -> Child | None:
        return next((c for c in self.children if c.returncode is not None), None)

    def supervise(self) -> int:
        """Wait until a stop is requested (returns 0) or a child exits (returns its non-zero code, or 1)."""
        while not self.stopping:
            dead = self.first_exited()
            if dead is not None:
                log.error("%s exited with code %s; stopping everything", dead.name, dead.returncode)
                return dead.returncode or 1
            time.sleep(0.2)
        return 0

    def shutdown(self) -> None:
        """SIGTERM every live child, newest first, each given up to GRACE_S seconds before SIGKILL."""
        for child in reversed(self.children):
            if child.returncode is None:
                child.proc.terminate()
                try:
                    child.proc.wait(GRACE_S)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in %.0f s; killing it", child.name, GRACE_S)
                    child.proc.kill()
                    child.proc.wait()
