"""Greedy outputs are identical under every scheduler x cache-policy combination (4 x 5).

One shard serves the whole module; a router per combination is started against it in turn (each router
ClearCaches the shard at start) and sent the same prompts, which share prefixes, all at once. Every
combination must return the texts fcfs + lru returns.
"""

from __future__ import annotations

import itertools
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import VENV_BIN, Process, free_port, wait_http_ok

SCHEDULERS = ("fcfs", "lpm", "dfs-weight", "qas")
POLICIES = ("lru", "lfu", "hotprefix", "lookahead-lru", "dart")
SYSTEM = "You are a careful assistant. Answer briefly and precisely, citing the manual section. " * 4
PROMPTS = [SYSTEM + q for q in ("How do I reset it?", "What is the warranty?", "Where is the fuse?")] + [
    SYSTEM + "How do I reset it? Then what?", "An unrelated short prompt", SYSTEM[:60] + " tail",
]


class Shard:
    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="prism-matrix-"))
        self.model = self.workdir / "model"
        Process("demo-model", [str(VENV_BIN / "prism-demo-model"), str(self.model)], self.workdir).proc.wait()
        self.uds = str(self.workdir / "shard")
        self.process = Process(
            "shard", [str(VENV_BIN / "prism-shard"), "serve", str(self.model), "--uds-path", self.uds,
                      "--num-blocks", "256", "--dtype", "float32"], self.workdir,  # exact oracle: fp32
        )

    def wait_ready(self) -> Shard:
        sock = Path(f"{self.uds}-0")
        for _ in range(1200):
            if sock.exists():
                return self
            assert self.process.proc.poll() is None, self.process.log_tail()
            time.sleep(0.1)
        raise RuntimeError(f"shard socket never appeared:\n{self.process.log_tail()}")


@pytest.fixture(scope="module")
def shard() -> Iterator[Shard]:
    s = Shard().wait_ready()
    yield s
    s.process.stop()
    shutil.rmtree(s.workdir, ignore_errors=True)


def run_router(shard: Shard, scheduler: str, policy: str) -> list[str]:
    """Start a router with this combination, send every prompt at once, return the texts, stop it."""
    port = free_port()
    cmd = [sys.executable, "-m", "router_py.cli", "--master-shard-uds-path", f"{shard.uds}-0",
           "--tokenizer-name", str(shard.model), "--hostname", "127.0.0.1", "--port", str(port),
           "--scheduler", scheduler, "--cache-policy", policy, "--max-input-tokens", "500",
           "--max-total-tokens", "600", "--max-batch-prefill-tokens", "600"]
    router = Process(f"router-{scheduler}-{policy}", cmd, shard.workdir)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/health", router)
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            return list(pool.map(lambda p: generate(port, p), PROMPTS))
    finally:
        assert router.stop() == 0


def generate(port: int, prompt: str) -> str:
    body = {"inputs": prompt, "parameters": {"max_new_tokens": 10}}
    r = httpx.post(f"http://127.0.0.1:{port}/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["generated_text"]


@pytest.fixture(scope="module")
def reference(shard: Shard) -> list[str]:
    return run_router(shard, "fcfs", "lru")


@pytest.mark.parametrize(("scheduler", "policy"), list(itertools.product(SCHEDULERS, POLICIES)))
def test_greedy_outputs_identical_across_schedulers_and_policies(
    shard: Shard, reference: list[str], scheduler: str, policy: str
) -> None:
    assert run_router(shard, scheduler, policy) == reference
