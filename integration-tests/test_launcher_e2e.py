"""The launcher as a user meets it: a hub id without a network ends with a clear message and a non-zero exit,
before any process is started; a TGI container's environment (variables only, Docker's HOSTNAME) is served as
TGI serves it, and SIGTERM / SIGINT leave no process and no socket file behind."""

from __future__ import annotations

import os
import signal
import subprocess

import httpx
import pytest
from conftest import VENV_BIN, Process, free_port, wait_http_ok


def test_unreachable_hub_model_fails_clearly(tmp_path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run([str(VENV_BIN / "prism-launcher"), "--model-id", "some-org/missing-model",
                          "--shard-uds-path", str(tmp_path / "s")], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 1
    assert "MODEL_ID 'some-org/missing-model' is not a local folder and could not be downloaded" in out.stdout
    assert "pass a local model folder" in out.stdout
    assert not list(tmp_path.glob("s-*"))


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_tgi_container_env_is_served_and_a_stop_leaves_nothing_behind(tmp_path, stop) -> None:
    port, uds = free_port(), str(tmp_path / "shard")
    env = {**os.environ, "PORT": str(port), "HOSTNAME": "3f2a9c1d0e7b", "SHARD_UDS_PATH": uds,
           "MAX_INPUT_TOKENS": "500", "MAX_TOTAL_TOKENS": "600", "MAX_BATCH_PREFILL_TOKENS": "1000",
           "NUM_SHARD": "1", "SHARDED": "false", "TRUST_REMOTE_CODE": "true"}
    env.pop("MODEL_ID", None)
    launcher = Process("launcher", [str(VENV_BIN / "text-generation-launcher")], tmp_path, env)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/health", launcher)  # HOSTNAME is no IP: bound on 0.0.0.0
        info = httpx.get(f"http://127.0.0.1:{port}/info").json()
        assert (info["max_input_tokens"], info["max_total_tokens"]) == (500, 600)
        assert os.path.exists(f"{uds}-0")
        launcher.proc.send_signal(stop)
        assert launcher.proc.wait(30) == 0, launcher.log_tail()
    finally:
        launcher.stop()
    assert not list(tmp_path.glob("shard-*")), "socket file left behind"  # before: shard-0 stayed
    left = subprocess.run(["pgrep", "-f", uds], capture_output=True, text=True).stdout
    assert left == "", f"orphan processes: {left}"
