# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""``demo``: the whole system on bundled photographs, through the real ROS 2 node.

Builds a map from ``data/demo/database``, starts ``vpr_node`` as a subprocess, publishes the
``data/demo/queries`` photos on a camera topic, collects ``~/match`` and ``~/top_k``, and
reports per query the matched place and whether it is right, then Recall@1 with DHE
re-ranking and without (the best global similarity in the same ``~/top_k``). Writes
``matches.png`` (query | match, homography outline) and ``session_bag/`` (a rosbag2, MCAP, of the
inputs and outputs), and exits non-zero when anything failed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from .arguments import number
from .rerank import RERANKERS

DATA = Path(__file__).resolve().parent / "data" / "demo"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_output", help="where the map, picture and bag go")
    parser.add_argument("--reranker", default="dhe", choices=RERANKERS)
    parser.add_argument("--checkpoint", help="model checkpoint (default: the shipped model)")
    parser.add_argument("--timeout", type=number(0.0, 3600.0, above=True), default=60.0,
                        help="seconds to wait for each answer")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    import rclpy
    from rclpy.serialization import serialize_message

    out = Path(args.out).resolve()
    claim_output(out)
    start = time.monotonic()
    log.info("[1/4] building the map from %d bundled photos", len(list((DATA / "database").glob("*.jpg"))))
    database, places = _build_map(args, out)
    log.info("[2/4] starting vpr_node (re-ranker %s)", args.reranker)
    params = {"/**": {"ros__parameters": {
        "map_path": str(out / "map"), "checkpoint": args.checkpoint or "", "reranker": args.reranker,
        "image_topics": ["/demo/camera/image_raw"], "image_qos_reliability": "reliable",
        "top_k": places, "min_time_gap_sec": 0.0, "min_score": 0.0, "sequence_length": 1,
        "diagnostics_period_sec": 1.0}}}  # the demo queries are unrelated places, not a route
    params_file = out / "demo_params.yaml"
    params_file.write_text(json.dumps(params))
    node_log = open(out / "vpr_node.log", "w")
    cmd = [sys.executable, "-m", "dhe_vpr_ros", "node", "--ros-args", "--params-file", str(params_file)]
    node = subprocess.Popen(cmd, stdout=node_log, stderr=subprocess.STDOUT)
    rclpy.init()
    failures: list[str] = []
    records: list[tuple[str, int, object]] = []  # (topic, stamp ns, message) for the bag
    try:
        results = _exchange(rclpy, node, out, args.timeout, failures, records)
    finally:
        stop_node(node)
        node_log.close()
        rclpy.try_shutdown()
    log.info("[3/4] results")
    right, right_global, n, panels = _report(args, database, results)
    log.info("[4/4] writing %s and %s", out / "matches.png", out / "session_bag")
    _write_picture(out / "matches.png", panels)
    _write_bag(out / "session_bag", records, serialize_message)
    summary = {"recall@1": {args.reranker: 100.0 * right / n, "global_only": 100.0 * right_global / n},
               "queries": n, "answered": len(results), "seconds": time.monotonic() - start, "failures": failures}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    sys.stdout.write(f"wrote {out / 'matches.png'}, {out / 'session_bag'} in {summary['seconds']:.0f} s\n")
    for failure in failures:
        log.error("%s", failure)
    return 1 if failures else 0


def _build_map(args: argparse.Namespace, out: Path):
    """The bundled reference photos -> out/map; returns the map and its number of places."""
    from .build_map import add_frames
    from .datasets import folder_frames
    from .localizer import model_identity
    from .mapdb import MapDatabase
    from .runtime import open_localizer

    localizer = open_localizer(args.checkpoint, reranker="none", new_map=lambda model, info: MapDatabase(
        model_identity(model), build_info=info, spill_dir=str(out)))
    frames = folder_frames(DATA / "database")
    for i, frame in enumerate(frames):
        frame.timestamp_ns = (1000 + 10 * i) * 1_000_000_000  # one place every 10 s of a "first traverse"
    add_frames(localizer, frames, desc="map")
    localizer.database.save(out / "map", replace=True)  # the folder is the demo's own (claim_output)
    return localizer.database, len(frames)


def _report(args: argparse.Namespace, database, results: dict) -> tuple[int, int, int, list]:
    """Print each query's answer against its true place; returns (right, right by the global
    descriptor alone, queries, picture panels)."""
    from .datasets import folder_frames
    from .debug_image import draw_match
    from .localizer import Candidate

    queries = folder_frames(DATA / "queries")
    right = right_global = 0
    lines = [f"{'query':<28} {'matched place':<26} {'score':>7} {'right':>6}   {'global-only':<26}"]
    panels = []
    for i, query in enumerate(queries):
        got = results.get(i)
        if got is None:
            lines.append(f"{Path(query.source).name:<28} (no answer)")
            continue
        match, top = got
        place = database.places[int(match[1])]
        global_best = int(top[np.argmax(top[:, 2]), 0])
        ok = int(match[1]) == i
        right += ok
        right_global += global_best == i
        global_name = Path(database.places[global_best].source).name
        lines.append(f"{Path(query.source).name:<28} {Path(place.source).name:<26} {match[2]:>7.1f} "
                     f"{'yes' if ok else 'NO':>6}   {global_name:<26}")
        cand = Candidate(place, float(match[2]), float(match[3]), np.array(match[5:14]).reshape(3, 3))
        panels.append(draw_match(query.load(), cand, np.zeros((0, 2, 2)), 200,
                                 f"q{i} -> place {place.place_id} ({'right' if ok else 'WRONG'})",
                                 (0, 220, 0) if ok else (230, 0, 0)))
    n = len(queries)
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.write(f"Recall@1 with {args.reranker} re-ranking: {100.0 * right / n:.1f} % ({right}/{n})\n")
    sys.stdout.write(f"Recall@1 global descriptor only:    {100.0 * right_global / n:.1f} % ({right_global}/{n})\n")
    return right, right_global, n, panels


def _write_picture(path: Path, panels: list) -> None:
    """The answer panels in two columns."""
    if not panels:
        return
    width = max(p.shape[1] for p in panels)
    rows = [np.pad(p, ((0, 4), (0, width - p.shape[1]), (0, 0))) for p in panels]
    cols = [np.concatenate(rows[j::2] + ([np.zeros_like(rows[0])] if len(rows[j::2]) < len(rows[0::2]) else []))
            for j in (0, 1)]
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(cols, axis=1), cv2.COLOR_RGB2BGR))


def stop_node(node: subprocess.Popen, timeout: float = 60.0) -> None:
    """Ctrl-C for a node subprocess (it saves what it must and exits), a kill if it hangs."""
    if node.poll() is None:
        node.send_signal(signal.SIGINT)
        try:
            node.wait(timeout)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()


MARKER = ".dhe_vpr_ros_demo"  # in every folder the demo writes: it may write there again


def claim_output(out: Path) -> None:
    """The demo writes only into a new or empty folder, or one it wrote before (it holds MARKER);
    ValueError, nothing touched, for a folder holding files the user put there."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"demo --out {out} is a file: nothing was changed; choose a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        names = ", ".join(sorted(p.name for p in out.iterdir())[:5])
        raise ValueError(f"demo --out {out} holds files the demo did not write ({names}): nothing was changed; "
                         "choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `python -m dhe_vpr_ros demo`; it replaces its own files here\n")


def _exchange(rclpy, node_proc, out, timeout, failures, records) -> dict:
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float64MultiArray

    from .datasets import folder_frames
    from .image_conversion import rgb_to_fields

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
    queries = folder_frames(DATA / "queries")
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


def _write_bag(path: Path, records, serialize) -> None:
    """A rosbag2 (MCAP) a ROS user can `ros2 bag play`; written atomically."""
    import shutil

    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    types = {"/demo/camera/image_raw": "sensor_msgs/msg/Image"}
    tmp = Path(tempfile.mkdtemp(prefix=".session.", dir=path.parent)) / "bag"
    with Writer(tmp, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {}
        for topic, stamp, msg in sorted(records, key=lambda r: r[1]):
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, types.get(topic, "std_msgs/msg/Float64MultiArray"),
                                                     typestore=store)
            writer.write(conns[topic], stamp, serialize(msg))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    shutil.rmtree(tmp.parent, ignore_errors=True)
