"""What ``prism-launcher --version`` and ``--env`` print (TGI's ``-V`` and its ``env_runtime``): versions,
the platform, CPUs and, where ``nvidia-smi`` runs, the GPUs. Imports no torch (the router's packages never
do): its version is read from the installed package's metadata."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata

from router_py import env
from router_py.router_config import VERSION


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def version_line() -> str:
    """``%(prog)s 3.3.6-dev0 (prism-serve X)``: TGI's version first, for scripts that parse it."""
    return f"%(prog)s {VERSION} (prism-serve {package_version('prism-serve')})"


def describe() -> str:
    """A multi-line report of the runtime, as TGI's launcher logs it with ``--env``."""
    lines = [
        f"prism-serve version: {package_version('prism-serve')} (TGI API {VERSION})",
        f"Python: {sys.version.split()[0]} ({sys.executable})",
        f"torch: {package_version('torch')}",
        f"Platform: {platform.platform()} ({platform.machine()})",
        f"CPUs usable: {env.cpu_cores()} of {os.cpu_count()}",
        f"Docker label: {env.docker_label() or 'N/A'}",
        f"nvidia-smi:\n{_nvidia_smi()}",
    ]
    return "\n".join(lines)


def _nvidia_smi() -> str:
    if shutil.which("nvidia-smi") is None:
        return "N/A (no nvidia-smi on PATH)"
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"N/A ({type(e).__name__})"
    return out.stdout.strip() or f"N/A (exit {out.returncode})"
