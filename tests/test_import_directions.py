"""DESIGN.md's import directions: decision logic never imports torch; router and shard meet only via proto."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "prism_cache": {"torch", "numpy", "grpc", "router_py", "shard", "flash_kernels", "bench", "proto"},
    "router_py": {"torch", "shard", "flash_kernels"},
    "bench": {"torch", "shard", "flash_kernels"},
    "shard": {"router_py", "prism_cache", "bench"},
    "flash_kernels": {"router_py", "prism_cache", "shard", "bench"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_import_directions(package: str) -> None:
    files = [p for p in (ROOT / package).rglob("*.py") if "tests" not in p.parts]
    assert files, f"{package} has no source files"
    bad = {
        str(p.relative_to(ROOT)): sorted(_imports(p) & FORBIDDEN[package])
        for p in files
        if _imports(p) & FORBIDDEN[package]
    }
    assert not bad, f"imports crossing DESIGN.md's directions: {bad}"


def test_decision_logic_imports_without_torch() -> None:
    """prism_cache and the router's scheduling import with torch blocked in sys.modules."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import prism_cache, router_py.scheduling.interface, router_py.scheduling.registry\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
