# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The package's real ROS entry points as a user runs them: `ros2 run`, `ros2 launch`,
`ros2 param`, `ros2 lifecycle` and a launch_testing test, in a sourced colcon workspace.

The ROS 2 command line comes from ../shared/ros2-cli (`.ci/setup` installs it and builds this
package into .ros2_ws); where that kit is absent these tests are skipped with that reason.
"""
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WS = Path(os.environ.get("DHE_VPR_ROS2_WS", REPO / ".ros2_ws"))
SETUP = WS / "install" / "setup.bash"
DEMO = REPO / "dhe_vpr_ros" / "data" / "demo" / "database"

pytestmark = pytest.mark.skipif(
    not (WS / "install" / "dhe_vpr_ros").is_dir() or not (WS / "install" / "composition_interfaces").is_dir(),
    reason=f"no ROS 2 command line: run ../shared/ros2-cli/install.sh .venv {WS} and build this package "
           "there (.ci/setup does both)")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMENT_", "COLCON_", "ROS_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env["ROS_DOMAIN_ID"] = str(random.Random(os.getpid() + 7).randint(101, 200))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["PYTHONUNBUFFERED"] = "1"
    return env


ENV = _env()


def sh(command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """A command in the sourced workspace, as a user types it."""
    return subprocess.run(["bash", "-c", f"source {SETUP} && {command}"], env=ENV, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def sh_until(command: str, expect: str, timeout: float = 60) -> str:
    """Repeat a query until its output holds ``expect`` (the ros2 daemon discovers a new node a
    few seconds after it appears); returns the last output."""
    end = time.monotonic() + timeout
    while True:
        result = sh(command)
        out = result.stdout + result.stderr
        if expect in result.stdout or time.monotonic() > end:
            return out
        time.sleep(1.0)


class Launch:
    """`ros2 launch ...` in its own process group, so that Ctrl-C reaches all of it as from a terminal."""

    def __init__(self, args: str, log: Path):
        self.log_path = log
        self.log = open(log, "w")
        self.proc = subprocess.Popen(["bash", "-c", f"source {SETUP} && exec ros2 launch dhe_vpr_ros {args}"],
                                     env={**ENV, "TMPDIR": str(log.parent)},  # launch_ros's params files
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=REPO)

    def text(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, needle: str, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while needle not in self.text():
            assert self.proc.poll() is None, f"launch ended early:\n{self.text()}"
            assert time.monotonic() < end, f"no {needle!r} within {timeout} s:\n{self.text()}"
            time.sleep(0.3)

    def ctrl_c(self, timeout: float = 60) -> int:
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.log.close()


@pytest.fixture(scope="module", autouse=True)
def _stop_ros2_daemon():
    """The ros2 CLI starts a discovery daemon for our domain: stop it when done."""
    yield
    sh("ros2 daemon stop", timeout=30)


@pytest.fixture(scope="module")
def demo_map(tmp_path_factory):
    path = tmp_path_factory.mktemp("ros2cli") / "map"
    result = sh(f"ros2 run dhe_vpr_ros build_map --images {DEMO} -o {path}", timeout=300)
    assert result.returncode == 0, result.stderr
    return path


def _console_scripts() -> set[str]:
    text = (REPO / "setup.py").read_text()
    block = text[text.index("CONSOLE_SCRIPTS"):text.index("]", text.index("CONSOLE_SCRIPTS"))]
    return set(re.findall(r'"(\w+) = ', block))


def test_ros2_run_finds_and_runs_every_console_script():
    listed = sh("ros2 pkg executables dhe_vpr_ros")
    assert listed.returncode == 0, listed.stderr
    found = {line.split()[1] for line in listed.stdout.splitlines() if line.strip()}
    assert found == _console_scripts()
    for script in sorted(found - {"vpr_node"}):
        result = sh(f"ros2 run dhe_vpr_ros {script} --help")
        assert result.returncode == 0 and "usage:" in result.stdout, (script, result.stdout, result.stderr)
    info = sh("ros2 run dhe_vpr_ros model_info")
    assert info.returncode == 0 and "efficientnet_lite0" in info.stdout
    node = sh("ros2 run dhe_vpr_ros vpr_node --ros-args -p map_path:=/nonexistent/map")
    lines = [ln for ln in (node.stdout + node.stderr).splitlines() if "cannot start" in ln]
    assert node.returncode != 0 and len(lines) == 1 and "does not exist" in lines[0], node.stdout + node.stderr
    assert "Traceback" not in node.stdout + node.stderr


def test_ros2_launch_with_map_path_lifecycle_params_and_ctrl_c(tmp_path, demo_map):
    launch = Launch(f"vpr.launch.py map_path:={demo_map}", tmp_path / "launch.log")
    try:
        launch.wait_for("active: listening")
        assert str(demo_map) in sh_until("ros2 param get /vpr_node map_path", str(demo_map))
        assert sh_until("ros2 lifecycle get /vpr_node", "active").startswith("active")
        assert "successful" in sh_until("ros2 lifecycle set /vpr_node deactivate", "successful")
        assert sh("ros2 lifecycle get /vpr_node").stdout.startswith("inactive")
        assert "successful" in sh_until("ros2 lifecycle set /vpr_node activate", "successful")
        assert sh("ros2 lifecycle get /vpr_node").stdout.startswith("active")
        changed = sh("ros2 param set /vpr_node top_k 8")
        assert "successful" in changed.stdout and "8" in sh("ros2 param get /vpr_node top_k").stdout
        refused = sh("ros2 param set /vpr_node top_k 0")
        assert "out of range" in refused.stdout + refused.stderr
        assert "8" in sh("ros2 param get /vpr_node top_k").stdout
        read_only = sh("ros2 param set /vpr_node device cuda")
        assert "read-only" in read_only.stdout + read_only.stderr
    finally:
        code = launch.ctrl_c()
    assert code == 0, launch.text()
    assert "Traceback" not in launch.text() and "process has finished cleanly" in launch.text()


def test_params_file_is_obeyed_and_ctrl_c_saves_the_map(tmp_path, demo_map):
    saved = tmp_path / "saved_map"
    params = tmp_path / "my.yaml"
    params.write_text(f"/**:\n  ros__parameters:\n    map_path: {demo_map}\n    device: cpu\n"
                      f"    top_k: 5\n    save_map_path: {saved}\n")
    launch = Launch(f"vpr.launch.py params_file:={params}", tmp_path / "launch.log")
    try:
        launch.wait_for("active: listening")
        for name, value in (("map_path", str(demo_map)), ("device", "cpu"), ("top_k", "5")):
            assert value in sh_until(f"ros2 param get /vpr_node {name}", value), name
    finally:
        code = launch.ctrl_c()
    text = launch.text()
    assert code == 0 and "Traceback" not in text, text
    assert "saved 14 places" in text and (saved / "manifest.json").is_file()


def test_launch_testing_publishes_an_image_and_receives_a_match(tmp_path, demo_map):
    params = tmp_path / "reliable.yaml"  # reliable image QoS: a 480x384 frame crosses processes whole
    params.write_text("/**:\n  ros__parameters:\n    image_qos_reliability: reliable\n")
    image = sorted(DEMO.glob("03_*.jpg"))[0]
    result = sh(f"TMPDIR={tmp_path} DHE_VPR_TEST_MAP={demo_map} DHE_VPR_TEST_PARAMS={params} "
                f"DHE_VPR_TEST_IMAGE={image} DHE_VPR_TEST_PLACE=3 launch_test test/launch/launch_vpr_match.py",
                timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "test_an_image_gets_a_match_for_its_place" in result.stdout + result.stderr


def test_calibrate_writes_a_params_file_that_the_launch_file_loads(tmp_path, demo_map):
    """`ros2 run dhe_vpr_ros calibrate` on the bundled photos (query i shows place i), then
    `ros2 launch ... params_file:=` that file: the node runs with the calibrated values."""
    import yaml
    params = tmp_path / "calibrated.yaml"
    result = sh(f"ros2 run dhe_vpr_ros calibrate --reference {DEMO} --queries {DEMO.parent / 'queries'} "
                f"--tolerance 0 --map {demo_map} --reranker ransac -o {params}", timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    values = yaml.safe_load(params.read_text())["/**"]["ros__parameters"]
    launch = Launch(f"vpr.launch.py params_file:={params} map_path:={demo_map}", tmp_path / "launch.log")
    try:
        launch.wait_for("active: listening")
        for name in ("reranker", "min_score", "sequence_length", "min_distinctiveness"):
            shown = str(values[name])
            assert shown in sh_until(f"ros2 param get /vpr_node {name}", shown), name
    finally:
        code = launch.ctrl_c()
    assert code == 0 and "Traceback" not in launch.text(), launch.text()


def test_launch_runs_the_exported_model_on_onnxruntime(tmp_path, demo_map):
    """`ros2 run dhe_vpr_ros export_onnx --int8`, then `ros2 launch ... runtime:=onnxruntime onnx_dir:=`:
    the node runs the exported float files on the demo map (built with PyTorch: the same identity), and with
    `precision:=int8` the int8 backbone on a map `build_map --precision int8` built."""
    pytest.importorskip("onnxruntime")
    onnx, int8_map = tmp_path / "onnx", tmp_path / "int8_map"
    result = sh(f"ros2 run dhe_vpr_ros export_onnx --out {onnx} --int8 --calibration-images {DEMO}", timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (onnx / "regressor.onnx").is_file() and (onnx / "model.json").is_file()
    assert (onnx / "backbone.int8.onnx").is_file()
    result = sh(f"ros2 run dhe_vpr_ros build_map --images {DEMO} -o {int8_map} --runtime onnxruntime --onnx {onnx} "
                "--precision int8", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for arguments, expect in ((f"map_path:={demo_map}", "float backbone"), (f"map_path:={int8_map} precision:=int8",
                                                                            "int8 backbone")):
        launch = Launch(f"vpr.launch.py {arguments} runtime:=onnxruntime onnx_dir:={onnx}", tmp_path / "launch.log")
        try:
            launch.wait_for("active: listening")
            assert "onnxruntime" in sh_until("ros2 param get /vpr_node runtime", "onnxruntime")
            assert f"runtime onnxruntime: {onnx}" in launch.text() and expect in launch.text(), launch.text()
        finally:
            code = launch.ctrl_c()
        assert code == 0 and "Traceback" not in launch.text(), launch.text()
