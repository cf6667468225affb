# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Real ROS 2 plumbing for node tests: the node in its own process, a probe node here.

Each test session gets its own DDS domain, localhost only, so parallel runs do not meet.
"""
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseWithCovarianceStamped  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from dhe_vpr_ros.image_conversion import encode_compressed, rgb_to_fields  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "vpr.yaml"


def node_command(params_file: Path, extra: tuple = ()) -> list[str]:
    """What `ros2 run dhe_vpr_ros vpr_node --ros-args --params-file ...` runs: the installed
    console script (or the module when the package is not installed as scripts)."""
    script = shutil.which("vpr_node", path=str(Path(sys.executable).parent))
    head = [script] if script else [sys.executable, "-m", "dhe_vpr_ros", "node"]
    return [*head, "--ros-args", "--params-file", str(CONFIG), "--params-file", str(params_file), *extra]


def write_params(path: Path, **values) -> Path:
    import json  # JSON is YAML: no PyYAML needed
    path.write_text(json.dumps({"/**": {"ros__parameters": values}}))
    return path


class NodeProcess:
    def __init__(self, params_file: Path, log_path: Path, extra: tuple = ()):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(node_command(params_file, extra), stdout=self.log, stderr=subprocess.STDOUT)

    def text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


class Probe:
    """A test-side node: publishes camera frames, records everything vpr_node publishes."""

    def __init__(self, ns: str = "/vpr_node", image_topic: str = "/cam", reliable: bool = True,
                 lio_topic: str = "/vpr_node/loop_closure"):
        self.node = rclpy.create_node(f"probe_{os.getpid()}_{int(time.time() * 1000) % 100000}")
        rel = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
        qos = QoSProfile(depth=10, reliability=rel)
        self.image_pub = self.node.create_publisher(Image, image_topic, qos)
        self.compressed_pub = self.node.create_publisher(CompressedImage, image_topic + "/compressed", qos)
        self.got = {name: [] for name in ("match", "top_k", "loop_closure", "lio_sam", "pose", "diag", "debug")}
        sub = self.node.create_subscription
        sub(Float64MultiArray, f"{ns}/match", lambda m: self.got["match"].append(m), 10)
        sub(Float64MultiArray, f"{ns}/top_k", lambda m: self.got["top_k"].append(m), 10)
        sub(Float64MultiArray, f"{ns}/loop_closure", lambda m: self.got["loop_closure"].append(m), 10)
        # LIO-SAM's own subscription: best effort, depth 1 (mapOptmization.cpp)
        sub(Float64MultiArray, lio_topic, lambda m: self.got["lio_sam"].append(m),
            QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
        sub(PoseWithCovarianceStamped, f"{ns}/matched_pose", lambda m: self.got["pose"].append(m), 10)
        sub(DiagnosticArray, "/diagnostics", lambda m: self.got["diag"].append(m), 10)
        sub(Image, f"{ns}/debug_image", lambda m: self.got["debug"].append(m), 10)

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=0.02)

    def wait_for(self, predicate, timeout: float, what: str):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=0.05)
            if predicate():
                return
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

    def wait_connected(self, proc: NodeProcess, timeout: float = 90) -> None:
        self.wait_for(lambda: self.image_pub.get_subscription_count() > 0
                      and self.node.count_publishers("/vpr_node/match") > 0
                      or proc.proc.poll() is not None, timeout, "vpr_node to come up")
        assert proc.proc.poll() is None, f"vpr_node exited:\n{proc.text()}"

    def publish_rgb(self, rgb, stamp_sec: float, encoding="rgb8", padding=0, frame_id="camera"):
        fields = rgb_to_fields(rgb, encoding, padding)
        msg = Image(height=fields["height"], width=fields["width"], encoding=encoding,
                    is_bigendian=fields["is_bigendian"], step=fields["step"], data=fields["data"])
        self._stamp(msg, stamp_sec, frame_id)
        self.image_pub.publish(msg)
        return msg

    def publish_raw(self, msg, stamp_sec: float):
        self._stamp(msg, stamp_sec, "camera")
        (self.compressed_pub if isinstance(msg, CompressedImage) else self.image_pub).publish(msg)

    def publish_jpeg(self, rgb, stamp_sec: float):
        msg = CompressedImage(format="jpeg", data=encode_compressed(rgb, "jpeg"))
        self.publish_raw(msg, stamp_sec)

    @staticmethod
    def _stamp(msg, stamp_sec, frame_id):
        msg.header.stamp.sec = int(stamp_sec)
        msg.header.stamp.nanosec = int(round((stamp_sec - int(stamp_sec)) * 1e9))
        msg.header.frame_id = frame_id

    def diag_values(self) -> dict:
        if not self.got["diag"]:
            return {}
        for status in self.got["diag"][-1].status:
            if status.name.startswith("vpr_node"):
                return {kv.key: kv.value for kv in status.values}
        return {}

    def close(self):
        self.node.destroy_node()
