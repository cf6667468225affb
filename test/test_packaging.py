# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The package builds with colcon the way a ROS 2 workspace builds it, and its console
scripts land where `ros2 run dhe_vpr_ros <name>` looks (lib/dhe_vpr_ros)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_cli_module_lists_commands_and_fails_clearly():
    out = subprocess.run([sys.executable, "-m", "dhe_vpr_ros", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "convert-checkpoint" in out.stdout and "info" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "dhe_vpr_ros", "info", "--checkpoint", "/no/such.pt"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2
    assert "checkpoint not found: /no/such.pt" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_colcon_build_installs_ros2_run_layout(tmp_path):
    colcon = shutil.which("colcon", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if colcon is None:
        pytest.skip("colcon is not installed (CI installs colcon-core and colcon-ros)")
    src = tmp_path / "src" / "dhe_vpr_ros"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".ros2_ws", "build", "install", "log", "__pycache__", "*.egg-info", ".pytest_cache",
        "demo_output"))
    result = subprocess.run([colcon, "build", "--base-paths", "src"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    prefix = tmp_path / "install" / "dhe_vpr_ros"
    assert (prefix / "share" / "dhe_vpr_ros" / "package.xml").is_file()
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "dhe_vpr_ros").is_file()
    script = prefix / "lib" / "dhe_vpr_ros" / "model_info"
    assert script.is_file() and os.access(script, os.X_OK)
    site = next(prefix.glob("lib/python3*/site-packages"))
    env = {**os.environ, "PYTHONPATH": str(site)}
    # ros2 run appends --ros-args; the entry point must tolerate it
    out = subprocess.run([str(script), "--backbone", "efficientnet_lite0", "--ros-args"], env=env,
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "efficientnet_lite0" in out.stdout and "regressor GFLOP/pair" in out.stdout


def test_the_names_users_type_stay_as_they_are(tmp_path):
    """Console scripts, commands, the map's files and manifest fields are an interface: moving code
    around inside the package must not change them (issue 27)."""
    import ast
    import json

    from dhe_vpr_ros.commands.cli import COMMANDS
    from dhe_vpr_ros.map import MapDatabase
    from dhe_vpr_ros.method.identity import ModelIdentity
    tree = ast.parse((ROOT / "setup.py").read_text())
    scripts = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                   and getattr(n.targets[0], "id", "") == "CONSOLE_SCRIPTS")
    assert sorted(s.split(" = ")[0] for s in scripts) == sorted([
        "dhe_vpr_ros", "convert_checkpoint", "model_info", "build_map", "query", "evaluate", "calibrate",
        "export_onnx", "train", "vpr_node"])
    assert sorted(COMMANDS) == sorted(["build-map", "demo", "query", "train", "evaluate", "calibrate",
                                       "convert-checkpoint", "export", "info"])
    database = MapDatabase(ModelIdentity("b", "0" * 64, 64, (8, 4, 4), 16))
    database.save(tmp_path / "map")
    assert sorted(p.name for p in (tmp_path / "map").iterdir()) == sorted(
        ["manifest.json", "global.faiss", "local.f16", "places.jsonl", "cells.f64", "static_mask.png"])
    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    assert sorted(manifest) == sorted(["format", "version", "model", "num_places", "index", "build", "revision",
                                       "mask", "files"])
    assert (manifest["format"], manifest["version"]) == ("dhe_vpr_ros.map", 1)
