"""The launcher's children: start them, restart one that dies (bounded, with backoff), stop them all in
reverse order.

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
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("router_py.launch.launcher")

PR_SET_PDEATHSIG = 1
GRACE_S = 90.0  # TGI's default graceful termination timeout


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
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    started_at: float = 0.0
    restarts: int = 0  # consecutive restarts (reset once it has stayed up RestartPolicy.reset_after_s)
    restartable: bool = True  # False: its exit stops all (a tensor-parallel rank cannot rejoin its group)

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()


@dataclass(frozen=True)
class RestartPolicy:
    """How :meth:`ProcessGroup.supervise` treats a child that exits. ``max_restarts`` 0: stop everything (TGI).

    Otherwise restart it after ``backoff_s * 2**n`` seconds (at most ``max_backoff_s``) for its n-th
    consecutive restart; after ``max_restarts`` consecutive ones give up and stop everything. A child that
    stayed up ``reset_after_s`` seconds starts counting from 0 again.
    """

    max_restarts: int = 0
    final_codes: tuple[int, ...] = (2,)  # exit codes a restart cannot fix (configuration errors, usage)
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    reset_after_s: float = 60.0

    def delay(self, restarts: int) -> float:
        return min(self.backoff_s * 2**restarts, self.max_backoff_s)


class ProcessGroup:
    def __init__(self, grace_s: float = GRACE_S) -> None:
        self.children: list[Child] = []
        self.stopping = False
        self.grace_s = grace_s

    def spawn(self, name: str, cmd: list[str], env: dict[str, str], restartable: bool = True) -> Child:
        log.debug("spawning %s: %s", name, " ".join(cmd))
        child = Child(name, self._popen(cmd, env), cmd, env, time.monotonic(), restartable=restartable)
        self.children.append(child)
        return child

    @staticmethod
    def _popen(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent)

    def request_stop(self, signum: int) -> None:
        """Signal handler: ask :meth:`supervise` (or the readiness wait) to return."""
        log.info("received %s, shutting down", signal.Signals(signum).name)
        self.stopping = True

    def first_exited(self) -> Child | None:
        return next((c for c in self.children if c.returncode is not None), None)

    def supervise(self, policy: RestartPolicy = RestartPolicy()) -> int:
        """Wait until a stop is requested (returns 0) or a child exits for good (returns its non-zero code, or
        1); a child that exits is restarted in place as ``policy`` allows."""
        while not self.stopping:
            dead = self.first_exited()
            if dead is not None and not self._restart(dead, policy):
                log.error("%s exited with code %s; stopping everything", dead.name, dead.returncode)
                return dead.returncode or 1
            time.sleep(0.2)
        return 0

    def _restart(self, child: Child, policy: RestartPolicy) -> bool:
        """Restart ``child`` after its backoff; False when its restarts are used up (or a stop came first)."""
        if time.monotonic() - child.started_at >= policy.reset_after_s:
            child.restarts = 0
        if child.returncode in policy.final_codes:
            return False
        if not child.restartable:
            log.error("%s cannot be restarted alone (its tensor-parallel group would have to)", child.name)
            return False
        if child.restarts >= policy.max_restarts:
            if policy.max_restarts:
                log.error("%s exited %d times in a row; giving up", child.name, child.restarts + 1)
            return False
        delay = policy.delay(child.restarts)
        child.restarts += 1
        log.warning("%s exited with code %s; restarting it in %.1f s (restart %d of %d)", child.name,
                    child.returncode, delay, child.restarts, policy.max_restarts)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            if self.stopping:
                return True  # NOTE: supervise returns 0 on its next check
            time.sleep(0.05)
        child.proc, child.started_at = self._popen(child.cmd, child.env), time.monotonic()
        log.info("%s restarted (pid %d)", child.name, child.proc.pid)
        return True

    def shutdown(self) -> None:
        """SIGTERM every live child, newest first, each given up to ``grace_s`` seconds before SIGKILL."""
        for child in reversed(self.children):
            if child.returncode is None:
                child.proc.terminate()
                try:
                    child.proc.wait(self.grace_s)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in %.0f s; killing it", child.name, self.grace_s)
                    child.proc.kill()
                    child.proc.wait()
