"""Default limits follow the model (issue 16 item 10): a model folder whose ``max_position_embeddings`` is
2,048 starts with default flags; max_total_tokens = min(usable KV pool, 2,048), max_input_tokens one less,
and the log says what was chosen and why. They follow a small KV pool too: the default prefill budget."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from conftest import Stack


def test_2048_position_model_starts_with_default_flags() -> None:
    folder = Path(tempfile.mkdtemp(prefix="prism-pos2048-")) / "model"
    subprocess.run([sys.executable, "-m", "shard.demo_model", str(folder), "--max-positions", "2048"],
                   check=True, capture_output=True)
    s = Stack(["--model-id", str(folder), "--num-blocks", "1024"]).wait_healthy()
    try:
        info = httpx.get(f"{s.url}/info").json()
        assert (info["max_total_tokens"], info["max_input_tokens"]) == (2048, 2047)
        r = httpx.post(f"{s.url}/generate", json={"inputs": "hello", "parameters": {"max_new_tokens": 4}},
                       timeout=60)
        assert r.status_code == 200, r.text
        log = s.process.log_tail(20000)
        assert "max_total_tokens 2048" in log and "bound by max_position_embeddings" in log
    finally:
        assert s.close() == 0


def test_a_small_kv_pool_starts_with_default_flags() -> None:
    """``--num-blocks 256`` and nothing else: 4,080 usable tokens, below the default prefill budget of 4,096,
    which Warmup refused ("exceeds the KV pool capacity"); the budget now follows the pool, a prompt of 4,000
    tokens is served, and the log says what was chosen and why."""
    s = Stack(["--num-blocks", "256"]).wait_healthy()
    try:
        info = httpx.get(f"{s.url}/info").json()
        assert (info["max_total_tokens"], info["max_input_tokens"]) == (4080, 4079)
        body = {"inputs": "w " * 5000, "parameters": {"max_new_tokens": 4, "truncate": 4000}}
        r = httpx.post(f"{s.url}/generate", json=body, timeout=120)
        assert r.status_code == 200, r.text
        log = s.process.log_tail(20000)
        assert "max_batch_prefill_tokens 4080 (not set: 4096 lowered to what the KV pool holds" in log
    finally:
        assert s.close() == 0
