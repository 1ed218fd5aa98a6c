"""Launch the real stack as a user would (``prism-launcher`` with the tiny demo model) on loopback, random
ports and temp socket paths; wait for ``/health``; attach the processes' logs to any failing test's report.

The demo model is built once into ``$PRISM_CACHE_DIR`` (default ``~/.cache/prism-serve``), as the serve command
does. Each module launches one stack (module-scoped fixtures) to keep the suite within a few minutes.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

VENV_BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_S = 180.0
_REPORTED: list[Process] = []  # processes alive during the current test: their logs go into its failure report


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A child process writing its output to a log file; stopped with SIGTERM (SIGKILL after 30 s)."""

    def __init__(
        self, name: str, cmd: Sequence[str], workdir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name, self.log_path = name, workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            list(cmd), stdout=self._log, stderr=subprocess.STDOUT, cwd=workdir, env=env
        )
        _REPORTED.append(self)

    def log_tail(self, chars: int = 6000) -> str:
        if not self.log_path.exists():
            return f"(log removed with {self.log_path.parent})"
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class Stack:
    """``prism-launcher`` serving the demo model on ``127.0.0.1:<random port>``."""

    def __init__(self, extra_args: Sequence[str] = ()) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="prism-it-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.uds = str(self.workdir / "shard")
        cmd = [str(VENV_BIN / "prism-launcher"), "--hostname", "127.0.0.1", "--port", str(self.port),
               "--shard-uds-path", self.uds, *extra_args]
        self.process = Process("launcher", cmd, self.workdir)

    def wait_healthy(self) -> Stack:
        wait_http_ok(f"{self.url}/health", self.process)
        return self

    def metric(self, name: str) -> float:
        """A counter's or gauge's value from ``/metrics`` (exact series name, labels included)."""
        return metric_value(httpx.get(f"{self.url}/metrics").text, name)

    def close(self) -> int:
        code = self.process.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return code


def child_pid(launcher_pid: int, marker: str) -> int:
    """The launcher's child whose command line contains ``marker``."""
    for task in Path(f"/proc/{launcher_pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if marker in cmdline:
                return int(pid)
    raise LookupError(f"no child of {launcher_pid} runs {marker!r}")


def wait_http_ok(url: str, process: Process, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            raise RuntimeError(f"{process.name} exited ({process.proc.returncode}):\n{process.log_tail()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not healthy after {timeout_s:.0f} s:\n{process.log_tail()}")


def metric_value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(f"{series} not in /metrics")


async def generated_or_gone(client: httpx.AsyncClient, url: str, body: dict, give_up_s: float | None) -> str | None:
    """POST ``body`` to ``url``/generate: the generated text, or None for a client that gives up after
    ``give_up_s`` seconds (its request queued, mid-prefill or later by then)."""
    call = client.post(f"{url}/generate", json=body)
    if give_up_s is not None:
        try:
            await asyncio.wait_for(call, give_up_s)
        except asyncio.TimeoutError:
            pass
        return None
    r = await call
    assert r.status_code == 200, r.text
    return r.json()["generated_text"]


def transformers_greedy(prompts: Sequence[str], new_tokens: int) -> dict[str, list[int]]:
    """transformers' greedy continuation (fp32) of each prompt on the demo model: the oracle that the stack's
    greedy tokens must equal, whatever the parallelism (the shard tests' oracle, keyed by prompt)."""
    from router_py.launch.model_source import demo_model
    from shard.bench_vs_hf import transformers_greedy as oracle

    return dict(zip(prompts, oracle(demo_model(), list(prompts), new_tokens)))


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """The product as served by default (qas + dart), with a KV pool of 1,024 blocks, in fp32: the suites'
    oracles (batched == solo, cache hit == cold) are exact only in fp32; on a bf16-native CPU the default is
    bf16, whose rounding depends on the batch shape (shard/tests cover bf16 against transformers)."""
    s = Stack(["--num-blocks", "1024", "--dtype", "float32"]).wait_healthy()
    yield s
    assert s.close() == 0, "the launcher did not shut down cleanly on SIGTERM"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for process in _REPORTED:
            report.sections.append((f"{process.name} log ({process.log_path})", process.log_tail()))
    if report.when == "teardown":
        _REPORTED[:] = [p for p in _REPORTED if p.proc.poll() is None]

