"""A live server under test: ``prism-launcher`` started as a subprocess with one configuration on a free port
and a private shard socket (unless ``extra_args`` name one: concurrent servers never share
``/tmp/text-generation-server-0``), waited for on ``/health`` and stopped (its own process group) when done.
Logs go to a file for post-mortems."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType


@dataclass(frozen=True)
class LaunchSpec:
    model_id: str
    command: tuple[str, ...] = ("prism-launcher",)
    extra_args: tuple[str, ...] = ()
    startup_timeout_s: float = 600.0
    log_dir: Path = Path(".")
    env: tuple[tuple[str, str], ...] = ()  # set for the server over this process's environment
    cwd: str | None = None  # the server's working folder (None: this process's)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class LiveServer:
    """``with LiveServer(spec, "qas", "dart") as url:`` runs one server for the block's duration."""

    def __init__(self, spec: LaunchSpec, scheduler: str, policy: str) -> None:
        self.spec, self.scheduler, self.policy = spec, scheduler, policy
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = spec.log_dir / f"server-{scheduler}+{policy}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.socket_dir: str | None = None

    def argv(self) -> list[str]:
        own_socket: list[str] = []
        if "--shard-uds-path" not in self.spec.extra_args:
            if self.socket_dir is None:
                self.socket_dir = tempfile.mkdtemp(prefix="prism-live-")
            own_socket = ["--shard-uds-path", f"{self.socket_dir}/shard"]
        return [
            *self.spec.command, "--model-id", self.spec.model_id, "--port", str(self.port),
            "--scheduler", self.scheduler, "--cache-policy", self.policy, *own_socket, *self.spec.extra_args,
        ]

    def __enter__(self) -> str:
        self.spec.log_dir.mkdir(parents=True, exist_ok=True)
        argv = self.argv()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env=dict(os.environ, **dict(self.spec.env)), cwd=self.spec.cwd)
        deadline = time.monotonic() + self.spec.startup_timeout_s
        while not healthy(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server {argv} did not become healthy; see {self.log_path}")
            time.sleep(0.5)
        return self.url

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM our server's process group, SIGKILL it after 30 s; remove its socket folder."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            self.socket_dir = None
