"""Default limits follow the model (issue 16 item 10): a model folder whose ``max_position_embeddings`` is
2,048 starts with default flags; max_total_tokens = min(usable KV pool, 2,048), max_input_tokens one less,
and the log says what was chosen and why."""

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
