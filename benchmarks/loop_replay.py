#!/usr/bin/env python3
# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Replay a second run of a route through the real node and count its loop closures.

From a reference and a query image sequence of one route (folders, frame i of each at the same
place; ``benchmarks/sequences.py`` makes them from public data) this script:

1. writes each run as a rosbag2 (MCAP; ``sensor_msgs/Image`` rgb8 on ``/camera/image_raw`` and
   ``nav_msgs/Odometry`` on ``/odom``, one frame per ``--period`` seconds, the reference run
   long before the query run; the datasets have no odometry, so the pose is the frame index
   along x, ``--spacing`` metres apart);
2. builds the map with the real command: ``build-map --bag ... --pose-topic /odom``;
3. starts the real node (``python -m dhe_vpr_ros node``) with the package's defaults, the map,
   reliable image QoS (large images cross processes) and any ``--params-file``/``--set``;
4. publishes the query run over DDS in order, each frame after the node answered the last
   (so every frame is judged; ``--step`` skips frames as a faster robot would);
5. collects ``~/match`` and ``~/loop_closure`` and prints right / wrong / far (more than 5
   frames off) loop closures, precision, recall, and latency; then the recall that thresholding
   the single-frame score (``~/match``'s score) alone reaches at the same precision.

``--online``: loop closure within one run, the case most SLAM users have: the reference run and
then the query run are published as ONE drive to a node that starts with an empty map and grows
it with its own keyframes (``add_keyframes``); frame i of the second half revisits frame i of the
first. A loop closure of a second-half frame to a first-half keyframe within +-2 frames is right;
any other (in the first half, or to the second half's own keyframes) is wrong.

``--fold NAME --seq DIR``: one fold of ``benchmarks/folds.py`` (the folds the defaults are chosen on:
revisits, shifted views, stereo, a run that never returns, another run's map, one drive that returns),
played as the fold says (a prebuilt map from ``build-map --bag``, or one drive with the fold's stamps
through an empty map grown with keyframes) and judged with its truth.

Situations a robot meets: ``--map-frames A:B`` (the map holds reference frames A..B-1 only:
frames beyond it must close no loop; frames within 8 of its ends are reported apart),
``--step N`` (every Nth query frame), ``--still A:B:N`` (frames A..B-1 published N times each:
a robot that stops). ``--no-mask`` builds the map without its static-cell mask.

    python benchmarks/loop_replay.py --reference seq/gardens/reference --queries seq/gardens/queries

Ends with ``name=value`` lines.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(101, 200)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

TOLERANCE = 2  # frames: the datasets' ground truth
FAR = 5  # frames: a loop closure further off bends a SLAM map the most
EDGE = 8  # frames just beyond the map's ends may still see its last places
IMAGE_TOPIC, ODOM_TOPIC = "/camera/image_raw", "/odom"
REFERENCE_T0, QUERY_T0 = 1000.0, 100000.0


def span(text: str | None, n: int) -> tuple[int, int]:
    if not text:
        return 0, n
    a, b = (int(v) if v else d for v, d in zip(text.split(":"), (0, n)))
    return max(a, 0), min(b, n)


def publish_plan(n: int, step: int, still: str | None) -> list[int]:
    """Query frame indices in publish order."""
    plan = list(range(0, n, step))
    if still:
        a, b, times = (int(v) for v in still.split(":"))
        plan = [i for i in plan for _ in range(times if a <= i < b else 1)]
    return plan


def write_bag(path: Path, images: list[np.ndarray], indices: list[int], t0: float, period: float, spacing: float):
    """A rosbag2 of camera frames with odometry: message n is frame ``indices[n]`` at t0 + n * period."""
    from nav_msgs.msg import Odometry
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    from sensor_msgs.msg import Image

    from dhe_vpr_ros.image_conversion import rgb_to_fields

    store = get_typestore(Stores.ROS2_JAZZY)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        cam = writer.add_connection(IMAGE_TOPIC, "sensor_msgs/msg/Image", typestore=store)
        odom = writer.add_connection(ODOM_TOPIC, "nav_msgs/msg/Odometry", typestore=store)
        for n, i in enumerate(indices):
            stamp = t0 + n * period
            sec, nsec = int(stamp), int(round((stamp - int(stamp)) * 1e9))
            msg = Image(**rgb_to_fields(images[i], "rgb8"))
            msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id = sec, nsec, "camera"
            pose = Odometry()
            pose.header.stamp.sec, pose.header.stamp.nanosec, pose.header.frame_id = sec, nsec, "odom"
            pose.pose.pose.position.x = i * spacing
            pose.pose.pose.orientation.w = 1.0
            ns = sec * 1_000_000_000 + nsec
            writer.write(cam, ns, serialize_message(msg))
            writer.write(odom, ns, serialize_message(pose))


def read_images(folder: Path) -> list[np.ndarray]:
    from dhe_vpr_ros.map.sources import folder_frames
    return [f.load() for f in folder_frames(folder)]


def replay(args, work: Path, queries: list[np.ndarray], plan: list[int],
           stamps: list[float] | None = None) -> tuple[dict, list, list]:
    """Publish the planned query frames to the node (message n stamped ``stamps[n]``, default one a
    ``--period`` from QUERY_T0); returns (answers by publish index, loop closures, latencies)."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float64MultiArray

    from dhe_vpr_ros.ros.demo_client import stop_node
    from dhe_vpr_ros.image_conversion import rgb_to_fields

    stamps = stamps or [QUERY_T0 + n * args.period for n in range(len(plan))]
    params = {"map_path": "" if args.online else str(work / "map"), "image_topics": [IMAGE_TOPIC],
              "image_qos_reliability": "reliable", **({"add_keyframes": True} if args.online else {})}
    for item in args.set:
        name, value = item.split("=", 1)
        params[name] = json.loads(value)
    (work / "replay.yaml").write_text(json.dumps({"/**": {"ros__parameters": params}}))
    config = Path(__file__).resolve().parents[1] / "config" / "vpr.yaml"
    files = [config, work / "replay.yaml", *([Path(args.params_file)] if args.params_file else [])]
    cmd = [sys.executable, "-m", "dhe_vpr_ros", "node", "--ros-args"]
    cmd += [arg for f in files for arg in ("--params-file", str(f))]
    node_log = open(work / "node.log", "w")
    node = subprocess.Popen(cmd, stdout=node_log, stderr=subprocess.STDOUT)
    rclpy.init()
    probe = rclpy.create_node("loop_replay")
    pub = probe.create_publisher(Image, IMAGE_TOPIC, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    matches, loops = {}, []
    probe.create_subscription(Float64MultiArray, "/vpr_node/match",
                              lambda m: matches.setdefault(round(m.data[0], 3), (time.monotonic(), list(m.data))), 50)
    probe.create_subscription(Float64MultiArray, "/vpr_node/loop_closure", lambda m: loops.append(list(m.data)), 50)
    latencies = []
    try:
        deadline = time.monotonic() + 180
        while pub.get_subscription_count() == 0 or probe.count_publishers("/vpr_node/match") == 0:
            rclpy.spin_once(probe, timeout_sec=0.1)
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vpr_node did not come up:\n{(work / 'node.log').read_text()[-3000:]}")
        for n, i in enumerate(plan):
            stamp = stamps[n]
            msg = Image(**rgb_to_fields(queries[i], "rgb8"))
            msg.header.stamp.sec, msg.header.stamp.nanosec = int(stamp), int(round((stamp % 1) * 1e9))
            msg.header.frame_id = "camera"
            sent = time.monotonic()
            pub.publish(msg)
            key = round(stamp, 3)
            # online, a frame with no keyframe older than the time gap has no candidate and no answer
            quiet = args.online and stamp - stamps[0] <= params.get("min_time_gap_sec", 30.0) + args.period
            end = sent + (args.quiet_wait if quiet else args.timeout)
            while key not in matches and time.monotonic() < end and node.poll() is None:
                rclpy.spin_once(probe, timeout_sec=0.01)
            if key in matches:
                latencies.append((matches[key][0] - sent) * 1e3)
            if n % 100 == 0:
                print(f"  frame {n}/{len(plan)}: {len(loops)} loop closures", flush=True)
        end = time.monotonic() + 2
        while time.monotonic() < end:
            rclpy.spin_once(probe, timeout_sec=0.05)
    finally:
        stop_node(node)
        node_log.close()
        probe.destroy_node()
        rclpy.try_shutdown()
    answers = {n: matches[round(stamps[n], 3)][1] for n in range(len(plan)) if round(stamps[n], 3) in matches}
    return answers, loops, latencies


def region(query: int, a: int, b: int) -> str:
    if a <= query < b:
        return "in map"
    return "edge" if a - EDGE <= query < b + EDGE else "beyond"


def score_run(args, plan, answers, loops, a, b) -> dict:
    """Loop closures judged against the frame-index truth, and the single-frame curve of ~/match."""
    from dhe_vpr_ros.loop.precision import precision_curve, summarize
    counts = {r: {"frames": 0, "loops": 0, "right": 0, "wrong": 0, "far": 0} for r in ("in map", "edge", "beyond")}
    wrong = []  # (query frame, map frame) of every wrong loop closure
    for i in plan:
        counts[region(i, a, b)]["frames"] += 1
    for q_stamp, m_stamp in loops:
        n = int(round((q_stamp - QUERY_T0) / args.period))
        q = plan[n]
        r = int(round((m_stamp - REFERENCE_T0) / args.period))
        c = counts[region(q, a, b)]
        c["loops"] += 1
        right = a <= q < b and abs(q - r) <= TOLERANCE
        c["right" if right else "wrong"] += 1
        c["far"] += int(abs(q - r) > FAR)
        if not right:
            wrong.append((q, r))
    judged = {k: v for k, v in counts.items() if k != "edge"}
    loops_n = sum(c["loops"] for c in judged.values())
    right = counts["in map"]["right"]
    precision = right / loops_n if loops_n else 1.0
    recall = right / max(counts["in map"]["frames"], 1)
    # the single-frame alternative: ~/match's place and score, thresholded
    scores, correct, has = [], [], []
    for n, q in enumerate(plan):
        if region(q, a, b) == "edge":
            continue
        data = answers.get(n)
        place = int(data[1]) + a if data else -1  # map place ids count from the map's first frame
        scores.append(data[2] if data else -math.inf)
        has.append(a <= q < b)
        correct.append(a <= q < b and abs(place - q) <= TOLERANCE)
    curve = precision_curve(scores, correct, has)
    at = np.flatnonzero(curve.precision >= precision - 1e-9)
    single_recall = float(curve.recall[at].max()) if at.size else 0.0
    return {"counts": counts, "wrong": wrong, "precision": precision, "recall": recall,
            "single_frame_recall": single_recall,
            "single_frame_recall_at_100": summarize(curve).recall_at_100_precision}


def score_online(args, first: int, plan: list[int], loops) -> dict:
    """Loop closures of one drive (``plan`` indexes it: the first ``first`` frames are the first
    traverse): right when a second-traverse frame closes on a first-traverse keyframe of its place."""
    counts = {r: {"frames": 0, "loops": 0, "right": 0, "wrong": 0, "far": 0} for r in ("first", "second")}
    wrong = []
    for i in plan:
        counts["first" if i < first else "second"]["frames"] += 1
    for q_stamp, m_stamp in loops:
        q = plan[int(round((q_stamp - QUERY_T0) / args.period))]
        m = plan[int(round((m_stamp - QUERY_T0) / args.period))]
        c = counts["first" if q < first else "second"]
        c["loops"] += 1
        revisit = q >= first and m < first
        error = abs((q - first) - m) if revisit else abs(q - m)
        right = revisit and error <= TOLERANCE
        c["right" if right else "wrong"] += 1
        c["far"] += int(error > FAR)
        if not right:
            wrong.append((q, m))
    loops_n = sum(c["loops"] for c in counts.values())
    right = counts["second"]["right"]
    return {"counts": counts, "wrong": wrong, "precision": right / loops_n if loops_n else 1.0,
            "recall": right / max(counts["second"]["frames"], 1)}


def print_counts(result: dict, row: str, frames: str, wrong_as: str) -> None:
    """The right / wrong / far table of a replay, one row per part of the run, then the wrong closures."""
    print(f"{row:<9}{frames:>10}{'loops':>7}{'right':>7}{'wrong':>7}{'far':>5}")
    for key, c in result["counts"].items():
        print(f"{key:<9}{c['frames']:>10}{c['loops']:>7}{c['right']:>7}{c['wrong']:>7}{c['far']:>5}")
    if result["wrong"]:
        print(f"wrong loop closures ({wrong_as}): " + ", ".join(f"{q} -> {m}" for q, m in result["wrong"]))


def main_online(args, name: str, reference, queries) -> None:
    """``--online``: one drive through an empty map that grows with the node's keyframes."""
    drive = reference + queries
    plan = publish_plan(len(drive), args.step, args.still)
    work = Path(tempfile.mkdtemp(prefix="loop_replay-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    answers, loops, latencies = replay(args, work, drive, plan)
    result = score_online(args, len(reference), plan, loops)
    print(f"\n{name} online: one drive of {len(reference)} + {len(queries)} frames, {len(plan)} published, "
          f"{len(answers)} answered, {time.monotonic() - start:.0f} s")
    print_counts(result, "traverse", "frames", "drive frame -> keyframe's drive frame")
    far = sum(c["far"] for c in result["counts"].values())
    loops_n = sum(c["loops"] for c in result["counts"].values())
    print(f"precision {result['precision']:.3f}, recall {result['recall']:.3f} of the second traverse's frames")
    key = name.replace("-", "_") + "_online"
    print(f"{key}_loops={loops_n} {key}_far={far} {key}_precision={result['precision']:.3f} "
          f"{key}_recall={result['recall']:.3f}")
    if args.keep is None:
        import shutil
        shutil.rmtree(work, ignore_errors=True)


def main_fold(args) -> None:
    """``--fold``: one fold of ``benchmarks/folds.py`` through the node, judged with the fold's truth."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import folds as F
    fold = next((f for f in F.folds(args.seq, nordland=args.nordland) if f.name == args.fold), None)
    if fold is None:
        raise SystemExit(f"no fold {args.fold!r} under {args.seq} (benchmarks/folds.py --seq lists them)")
    work = Path(tempfile.mkdtemp(prefix="loop_replay-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    if fold.online:
        args.online = True
        args.set = [f"min_time_gap_sec={fold.gap_sec}", f"keyframe_min_interval_sec={fold.interval_sec}", *args.set]
        frames = [read_image_file(p) for p in fold.drive]
        stamps = [QUERY_T0 + s - fold.stamps[0] for s in fold.stamps]
        args.period = float(np.median(np.diff(stamps))) if len(stamps) > 1 else args.period
        answers, loops, _ = replay(args, work, frames, list(range(len(frames))), stamps)
        by_stamp = {round(s, 3): i for i, s in enumerate(stamps)}
        pairs = [(by_stamp[round(q, 3)], by_stamp[round(m, 3)]) for q, m in loops]
        has = fold.first <= np.arange(len(frames)) if fold.truth == "one_drive" else np.zeros(len(frames), bool)
    else:
        reference = read_images(fold.reference)[:fold.map_limit]
        queries = read_images(fold.queries)[:fold.query_limit]
        write_bag(work / "reference_bag", reference, list(range(len(reference))), REFERENCE_T0, args.period,
                  args.spacing)
        subprocess.run([sys.executable, "-m", "dhe_vpr_ros", "build-map", "--bag", str(work / "reference_bag"),
                        "--topic", IMAGE_TOPIC, "--pose-topic", ODOM_TOPIC, "-o", str(work / "map"),
                        *(["--static-threshold", "1"] if fold.still_map else [])], check=True)
        answers, loops, _ = replay(args, work, queries, list(range(len(queries))))
        pairs = [(int(round((q - QUERY_T0) / args.period)), int(round((m - REFERENCE_T0) / args.period)))
                 for q, m in loops]
        has = np.ones(len(queries), bool) if fold.truth in ("tolerance", "static") else np.zeros(len(queries), bool)
    q = np.array([a for a, _ in pairs], np.int64)
    p = np.array([b for _, b in pairs], np.int64)
    right, far = F.truth(fold, q, p) if pairs else (np.zeros(0, bool), np.zeros(0, bool))
    loops_n, right_n = len(pairs), int(right.sum())
    found = sum(1 for (a, _), ok in zip(pairs, right) if ok and has[a])  # recall: frames with a true place only
    precision = right_n / loops_n if loops_n else 1.0
    recall = found / max(int(has.sum()), 1)
    print(f"\n{fold.name} {F.describe_fold(fold)}: {len(answers)} frames answered, {loops_n} loop closures, "
          f"{right_n} right, {loops_n - right_n} wrong, {int(far.sum())} far; precision {precision:.3f}, recall "
          f"{recall:.3f}; {time.monotonic() - start:.0f} s")
    wrong = [(int(a), int(b)) for a, b, ok in zip(q, p, right) if not ok]
    if wrong:
        print("wrong loop closures (query frame -> place frame): " + ", ".join(f"{a} -> {b}" for a, b in wrong[:30]))
    key = fold.name.replace(":", "_")
    print(f"{key}_loops={loops_n} {key}_far={int(far.sum())} {key}_precision={precision:.3f} {key}_recall={recall:.3f}")
    if args.keep is None:
        import shutil
        shutil.rmtree(work, ignore_errors=True)


def read_image_file(path: Path) -> np.ndarray:
    from dhe_vpr_ros.image_conversion import read_image
    return read_image(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path)
    parser.add_argument("--queries", type=Path)
    parser.add_argument("--fold", help="a fold of benchmarks/folds.py (with --seq), played and judged as it says")
    parser.add_argument("--seq", type=Path, help="with --fold: the folder benchmarks/sequences.py wrote")
    parser.add_argument("--nordland", type=int, default=1000, help="with --fold: Nordland frames used (its first N)")
    parser.add_argument("--name", help="label for the name=value lines (default: the folder's parent)")
    parser.add_argument("--map-frames", help="A:B: the map holds reference frames A..B-1 only")
    parser.add_argument("--step", type=int, default=1, help="publish every Nth query frame (a faster robot)")
    parser.add_argument("--still", help="A:B:N: publish query frames A..B-1 N times each (a robot that stops)")
    parser.add_argument("--params-file", help="extra node parameters (e.g. from calibrate)")
    parser.add_argument("--mask", help="build-map --mask: a user mask for the map (white = use)")
    parser.add_argument("--no-mask", action="store_true", help="build the map without a static-cell mask "
                        "(--static-threshold 1), to see what the mask does")
    parser.add_argument("--set", action="append", default=[], help='NAME=JSON node parameter, e.g. reranker="ransac"')
    parser.add_argument("--period", type=float, default=0.5, help="seconds between frames in the bags")
    parser.add_argument("--spacing", type=float, default=1.0, help="metres between frames (odometry)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each ~/match")
    parser.add_argument("--keep", type=Path, help="keep the bags, map and node log in this new folder")
    parser.add_argument("--online", action="store_true", help="one drive (reference run, then query run) "
                        "through an empty map grown with the node's keyframes")
    parser.add_argument("--quiet-wait", type=float, default=1.0, help="--online: seconds given to a frame that "
                        "cannot have a candidate yet (no keyframe older than the time gap)")
    args = parser.parse_args()
    if args.fold:
        if not args.seq:
            parser.error("--fold needs --seq")
        main_fold(args)
        return
    if not (args.reference and args.queries):
        parser.error("give --reference and --queries, or --fold and --seq")
    name = args.name or args.reference.parent.name
    reference, queries = read_images(args.reference), read_images(args.queries)
    if args.online:
        main_online(args, name, reference, queries)
        return
    a, b = span(args.map_frames, len(reference))
    plan = publish_plan(len(queries), args.step, args.still)
    work = Path(tempfile.mkdtemp(prefix="loop_replay-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    write_bag(work / "reference_bag", reference, list(range(a, b)), REFERENCE_T0 + a * args.period, args.period,
              args.spacing)
    write_bag(work / "query_bag", queries, plan, QUERY_T0, args.period, args.spacing)
    subprocess.run([sys.executable, "-m", "dhe_vpr_ros", "build-map", "--bag", str(work / "reference_bag"),
                    "--topic", IMAGE_TOPIC, "--pose-topic", ODOM_TOPIC, "-o", str(work / "map"),
                    *(["--static-threshold", "1"] if args.no_mask else []),
                    *(["--mask", args.mask] if args.mask else [])], check=True)
    answers, loops, latencies = replay(args, work, queries, plan)
    result = score_run(args, plan, answers, loops, a, b)
    seconds = time.monotonic() - start
    print(f"\n{name}: {len(reference)} reference frames (map {a}:{b}), {len(plan)} query frames published, "
          f"{len(answers)} answered, {seconds:.0f} s")
    print_counts(result, "frames", "published", "query frame -> map frame")
    lat = sorted(latencies)
    p50 = statistics.median(lat) if lat else math.nan
    p95 = lat[min(len(lat) - 1, math.ceil(0.95 * len(lat)) - 1)] if lat else math.nan
    far = sum(c["far"] for k, c in result["counts"].items() if k != "edge")
    print(f"precision {result['precision']:.3f}, recall {result['recall']:.3f} (single-frame score alone at that "
          f"precision: {result['single_frame_recall']:.3f}; at 100 %: {result['single_frame_recall_at_100']:.3f}); "
          f"latency median {p50:.0f} ms, p95 {p95:.0f} ms")
    key = name.replace("-", "_")
    print(f"{key}_loops={sum(c['loops'] for c in result['counts'].values())} {key}_far={far} "
          f"{key}_wrong_beyond_map={result['counts']['beyond']['loops']} "
          f"{key}_precision={result['precision']:.3f} {key}_recall={result['recall']:.3f} "
          f"{key}_single_frame_recall_same_precision={result['single_frame_recall']:.3f} "
          f"{key}_latency_median_ms={p50:.0f} {key}_latency_p95_ms={p95:.0f}")
    if args.keep is None:
        import shutil
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
