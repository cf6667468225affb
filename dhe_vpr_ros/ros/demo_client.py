# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The demo's ROS side: start the real node as a process, publish the query photos on a camera
topic, collect ``~/match`` / ``~/top_k`` / ``~/loop_closure``, and keep the session as a rosbag2."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image
from std_msgs.msg import Float64MultiArray

from ..atomic import Scratch, check_output, exchange
from ..image_conversion import rgb_to_fields

__all__ = ["play_queries", "stop_node", "write_bag"]


def play_queries(params_file: Path, out: Path, timeout: float, queries: list) -> tuple[dict, list[str], list]:
    """Run ``vpr_node`` with ``params_file`` (its log in ``out/vpr_node.log``), publish each query
    frame and wait up to ``timeout`` s for its answer. Returns (query index -> (match values,
    top-K rows), failures, (topic, stamp ns, message) records for the bag)."""
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    failures: list[str] = []
    records: list[tuple[str, int, object]] = []
    check_output(out / "vpr_node.log")  # (a log the node streams into: checked by the write door first)
    with open(out / "vpr_node.log", "w") as node_log:
        cmd = [sys.executable, "-m", "dhe_vpr_ros", "node", "--ros-args", "--params-file", str(params_file)]
        node = subprocess.Popen(cmd, stdout=node_log, stderr=subprocess.STDOUT)
        rclpy.init()
        try:
            results = _exchange(node, out, timeout, queries, failures, records)
        finally:
            stop_node(node)
            rclpy.try_shutdown()
    return results, failures, records


def stop_node(node: subprocess.Popen, timeout: float = 60.0) -> None:
    """Ctrl-C for a node subprocess (it saves what it must and exits), a kill if it hangs."""
    if node.poll() is None:
        node.send_signal(signal.SIGINT)
        try:
            node.wait(timeout)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()


def _exchange(node_proc, out, timeout, queries, failures, records) -> dict:
    probe = rclpy.create_node("vpr_demo")
    pub = probe.create_publisher(Image, "/demo/camera/image_raw",
                                 QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    got = {"match": [], "top_k": [], "loop_closure": []}
    for name in got:
        probe.create_subscription(Float64MultiArray, f"/vpr_node/{name}", lambda m, n=name: got[n].append(m), 10)
    deadline = time.monotonic() + 120
    while pub.get_subscription_count() == 0 or probe.count_publishers("/vpr_node/match") == 0:
        rclpy.spin_once(probe, timeout_sec=0.1)
        if node_proc.poll() is not None or time.monotonic() > deadline:
            failures.append(f"vpr_node did not come up; see {out / 'vpr_node.log'}")
            return {}
    results = {}
    for i, query in enumerate(queries):
        stamp = 5000 + 10 * i  # the "second traverse"
        msg = Image(**rgb_to_fields(query.load(), "rgb8"))
        msg.header.stamp.sec, msg.header.frame_id = stamp, "camera"
        before = len(got["match"])
        pub.publish(msg)
        records.append(("/demo/camera/image_raw", stamp * 10**9, msg))
        end = time.monotonic() + timeout
        while len(got["match"]) == before or len(got["top_k"]) <= before:
            rclpy.spin_once(probe, timeout_sec=0.05)
            if time.monotonic() > end or node_proc.poll() is not None:
                failures.append(f"no ~/match for query {i} ({Path(query.source).name})")
                break
        else:
            match, top = got["match"][-1], got["top_k"][-1]
            records.append(("/vpr_node/match", stamp * 10**9 + 1, match))
            records.append(("/vpr_node/top_k", stamp * 10**9 + 2, top))
            results[i] = (np.array(match.data), np.array(top.data).reshape(-1, 4))
            sys.stdout.write(f"  query {i + 1}/{len(queries)}: place {int(match.data[1])}\n")
            sys.stdout.flush()
    rclpy.spin_once(probe, timeout_sec=0.2)
    for m in got["loop_closure"]:
        records.append(("/vpr_node/loop_closure", int(m.data[0] * 1e9) + 3, m))
    probe.destroy_node()
    return results


def write_bag(path: Path, records) -> None:
    """A rosbag2 (MCAP) a ROS user can `ros2 bag play`; written atomically."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    types = {"/demo/camera/image_raw": "sensor_msgs/msg/Image"}
    scratch = Scratch(path.parent, "the demo's session bag")  # a marked temporary of the write door
    try:
        bag = scratch.path / "bag"
        with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
            conns = {}
            for topic, stamp, msg in sorted(records, key=lambda r: r[1]):
                if topic not in conns:
                    conns[topic] = writer.add_connection(topic, types.get(topic, "std_msgs/msg/Float64MultiArray"),
                                                         typestore=store)
                writer.write(conns[topic], stamp, serialize_message(msg))
        if not (path.exists() and exchange(bag, path)):  # the demo's own bag of an earlier run: swapped out
            os.replace(bag, path)
    finally:
        scratch.release()
