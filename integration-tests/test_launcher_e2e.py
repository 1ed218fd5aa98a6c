"""The launcher's failure paths as a user meets them: a hub id without a network ends with a clear message and
a non-zero exit, before any process is started."""

from __future__ import annotations

import os
import subprocess

from conftest import VENV_BIN


def test_unreachable_hub_model_fails_clearly(tmp_path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run([str(VENV_BIN / "prism-launcher"), "--model-id", "some-org/missing-model",
                          "--shard-uds-path", str(tmp_path / "s")], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 1
    assert "MODEL_ID 'some-org/missing-model' is not a local folder and could not be downloaded" in out.stdout
    assert "pass a local model folder" in out.stdout
    assert not list(tmp_path.glob("s-*"))
