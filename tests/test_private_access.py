"""No module reaches into another package's private names (a leading underscore): neither by importing them
(``from prism_cache.x import _y``) nor by attribute (``allocator._tree``). Within one top-level package,
private names stay shareable (a package's modules are written together); tests are white-box and exempt."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("prism_cache", "router_py", "bench", "shard", "flash_kernels")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _sources(package: str) -> dict[Path, ast.Module]:
    return {
        p: ast.parse(p.read_text(), filename=str(p))
        for p in (ROOT / package).rglob("*.py")
        if "tests" not in p.parts
    }


def _defined_private(trees: dict[Path, ast.Module]) -> set[str]:
    """Private names a package defines: functions, classes, attributes assigned on any object."""
    out: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            named = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            if named and _private(node.name):
                out.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _private(node.attr):
                out.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and _private(node.id):
                out.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                out.add(node.target.id)
    return out


def _foreign_modules(tree: ast.Module) -> set[str]:
    """Names bound to modules outside the project (``argparse``): their private names are their business."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] not in PACKAGES:
                    names.add((alias.asname or alias.name).split(".")[0])
    return names


def _violations(package: str, trees: dict[Path, ast.Module]) -> list[str]:
    own = _defined_private(trees)
    bad: list[str] = []
    for path, tree in trees.items():
        foreign = _foreign_modules(tree)
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                top = node.module.split(".")[0]
                bad += [
                    f"{where}:{node.lineno} imports {node.module}.{a.name}"
                    for a in node.names
                    if _private(a.name) and top in PACKAGES and top != package
                ]
            elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
                value = node.value
                if isinstance(value, ast.Name) and value.id in foreign | {"self", "cls"}:
                    continue
                bad.append(f"{where}:{node.lineno} reaches {ast.unparse(node)}")
    return bad


def test_no_private_access_across_packages() -> None:
    bad = {package: v for package in PACKAGES if (v := _violations(package, _sources(package)))}
    assert not bad, f"private names used across a package boundary: {bad}"


def test_the_check_sees_a_reach_into_the_cache() -> None:
    trees = _sources("router_py")
    probe = ROOT / "router_py" / "probe.py"
    code = "import argparse\ndef f(allocator):\n    return allocator._tree, argparse._ActionsContainer\n"
    trees[probe] = ast.parse(code)
    assert _violations("router_py", trees) == ["router_py/probe.py:3 reaches allocator._tree"]
    trees[probe] = ast.parse("from prism_cache.radix_tree import _Hidden\n")
    assert _violations("router_py", trees) == ["router_py/probe.py:1 imports prism_cache.radix_tree._Hidden"]
