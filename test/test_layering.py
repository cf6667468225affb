# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The package's architecture as a test: which subpackage may import which, where rclpy may be
imported, no import cycles, and modules small enough to read.

Every ``import`` and ``from ... import`` in every module is read with ``ast`` (those inside
functions too: a lazy import is still a dependency). Rules:

* the base modules directly in ``dhe_vpr_ros/`` (crash-safe files, typed JSON fields, image
  decoding) import nothing of the package;
* ``method`` imports nothing of maps, loop closure, runtime, training, ROS or commands;
* ``map`` imports only the method and the base; ``loop`` and ``runtime`` add the map;
  ``training`` adds loop closure and runtime; ``ros`` may use all of those but training;
  ``commands`` may use everything;
* rclpy and the ROS message packages are imported only under ``ros``;
* no module imports itself through others (no cycles), and none is over ``MAX_LINES`` lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "dhe_vpr_ros"
BASE = "base"
ALLOWED = {  # subpackage -> the subpackages (besides itself) it may import
    BASE: set(),
    "method": {BASE},
    "map": {BASE, "method"},
    "loop": {BASE, "method", "map"},
    "runtime": {BASE, "method", "map"},
    "training": {BASE, "method", "map", "loop", "runtime"},
    "ros": {BASE, "method", "map", "loop", "runtime"},
    "commands": {BASE, "method", "map", "loop", "runtime", "training", "ros"},
}
ROOT_MODULES = {"dhe_vpr_ros", "dhe_vpr_ros.__main__"}  # the package root sets up the process, runs commands
ROS_PACKAGES = {"rclpy", "rcl_interfaces", "lifecycle_msgs", "builtin_interfaces", "sensor_msgs", "std_msgs",
                "geometry_msgs", "nav_msgs", "diagnostic_msgs", "std_srvs", "rosgraph_msgs", "launch",
                "launch_ros", "ament_index_python"}
MAX_LINES = 450
MAX_BASE_MODULES = 8


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> set[str]:
    """Absolute names of everything ``path`` imports (``from .x import y`` gives ``pkg.x.y`` and
    ``pkg.x``: y may be a module or a name in x)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return found


def package_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports (names resolved to the modules that exist)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {target for target in imports_of(path, root) if target in modules and target != name}
    return graph


def layer(module: str, root: Path) -> str | None:
    """The subpackage a module belongs to (``base`` for the modules directly in the package,
    None for the package root and for what is not ours)."""
    if module in ROOT_MODULES or not module.startswith(root.name + "."):
        return None
    parts = module.split(".")
    is_package = (root.parent / module.replace(".", "/") / "__init__.py").is_file()
    return parts[1] if len(parts) > 2 or is_package else BASE


def violations(root: Path) -> list[str]:
    """Every broken rule, one line each."""
    problems = []
    graph = package_graph(root)
    for module, targets in sorted(graph.items()):
        own = layer(module, root)
        if own is None:
            continue
        if own not in ALLOWED:
            problems.append(f"{module}: subpackage {own!r} has no layering rule")
            continue
        for target in sorted(targets):
            other = layer(target, root)
            if other is not None and other != own and other not in ALLOWED[own]:
                problems.append(f"{module} imports {target}: {own} may not import {other}")
    for path in root.rglob("*.py"):
        module = module_name(path, root)
        ros = sorted({t.split(".")[0] for t in imports_of(path, root)} & ROS_PACKAGES)
        if ros and layer(module, root) != "ros":
            problems.append(f"{module} imports {', '.join(ros)}: only dhe_vpr_ros.ros may")
    problems.extend(f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph))
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (a package importing its own modules
    from ``__init__`` is not a cycle: the arrow back is the module's parent package)."""
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    found, state = [], {}

    def visit(node, trail):
        state[node] = "open"
        trail.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail)
        trail.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    return found


def test_the_package_keeps_its_layers():
    assert violations(PACKAGE_ROOT) == []


def test_every_subpackage_says_what_it_owns_and_exports_its_names():
    for init in sorted(PACKAGE_ROOT.glob("*/__init__.py")):
        if init.parent.name == "data":
            continue
        tree = ast.parse(init.read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), f"{init}: no docstring saying what the subpackage owns"
        names = [n for n in tree.body if isinstance(n, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)]
        assert names, f"{init}: no __all__"


def test_modules_are_small_and_few_sit_at_the_top():
    base = [p.name for p in PACKAGE_ROOT.glob("*.py")]
    assert len(base) <= MAX_BASE_MODULES, f"{len(base)} modules directly in dhe_vpr_ros/: {sorted(base)}"
    long = {str(p.relative_to(PACKAGE_ROOT)): n for p in PACKAGE_ROOT.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("where, line, expected", [
    ("method/geometry.py", "from ..map.database import MapDatabase", "method may not import map"),
    ("map/records.py", "from ..loop.sequence import SequenceVerifier", "map may not import loop"),
    ("loop/precision.py", "import rclpy", "only dhe_vpr_ros.ros may"),
    ("method/geometry.py", "from ..commands import cli", "method may not import commands"),
    ("method/geometry.py", "from .matching import Matches", "import cycle"),  # matching imports geometry
])
def test_a_planted_violation_is_caught(tmp_path, where, line, expected):
    """The checker on a copy of the package with one bad import added: it must say so."""
    import shutil
    copy = tmp_path / "dhe_vpr_ros"
    shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__", "data"))
    target = copy / where
    target.write_text(target.read_text() + f"\n{line}  # planted\n")
    found = violations(copy)
    assert any(expected in problem for problem in found), found
