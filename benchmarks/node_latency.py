#!/usr/bin/env python3
# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Frames through the real node: publish -> ~/match latency and sustained frames/s.

A map of N places (default 1000: 20 embedded photos of the demo set plus random filler
places of the same model, so retrieval and candidate reads cost what a real map's do), the
node as a subprocess with the shipped model, frames published over DDS (reliable QoS).

    python benchmarks/node_latency.py                       # CPU, light backbone
    python benchmarks/node_latency.py --device cuda --backbone cct14 --checkpoint CKPT
    python benchmarks/node_latency.py --busy-cores 1        # another process keeps a core busy
    python benchmarks/node_latency.py --onnx DIR --precision int8   # the export's int8 backbone (map built with it)

CPU cost: the node process's CPU time (user + system, /proc/PID/stat) over the frames it answered, at
--rate and at 30 Hz: what the robot's other work loses per frame.

Uses only node parameters and APIs the package has had since 0.2.0, so the same script measures
an older checkout (``PYTHONPATH=old_checkout python benchmarks/node_latency.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import math
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(101, 200)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


def _busy() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--places", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpoint", default="")
    parser.add_argument("--backbone", default="", help="without --checkpoint: e.g. cct14 (untrained regressor)")
    parser.add_argument("--reranker", default="dhe")
    parser.add_argument("--top-k", type=int, default=16)
    parser.add_argument("--rate", type=float, default=2.0, help="publish rate (Hz) for the latency run")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--busy-cores", type=int, default=0, help="processes that keep a core busy meanwhile")
    parser.add_argument("--set", action="append", default=[], help="NAME=JSON: another node parameter")
    parser.add_argument("--onnx", default="", help="an export folder: map and node run it in onnxruntime")
    parser.add_argument("--precision", default="", help="with --onnx: float or int8")
    args = parser.parse_args()

    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from diagnostic_msgs.msg import DiagnosticArray
    from std_msgs.msg import Float64MultiArray

    from dhe_vpr_ros.map.sources import folder_frames
    from dhe_vpr_ros.commands.demo import DATA
    from dhe_vpr_ros.image_conversion import rgb_to_fields
    from dhe_vpr_ros.method.identity import model_identity
    from dhe_vpr_ros.method.localizer import Localizer
    from dhe_vpr_ros.map.database import MapDatabase
    from dhe_vpr_ros.map.records import Place
    from dhe_vpr_ros.runtime.loading import load_model

    work = Path(tempfile.mkdtemp(prefix="node_latency-"))
    if args.onnx:  # builds that have onnxruntime exports; an older checkout runs without --onnx
        from dhe_vpr_ros.runtime.loading import load_any_model
        model, info = load_any_model(args.checkpoint or None, args.backbone or None, args.device, None,
                                     "onnxruntime", args.onnx, None, args.precision or "float")
    else:
        model, info = load_model(args.checkpoint or None, args.backbone or None, device=args.device)
    if not args.checkpoint and args.backbone:  # a randomly initialised backbone: the node must load the same one
        from dhe_vpr_ros.method.models import save_checkpoint
        args.checkpoint = str(work / "model.pt")
        save_checkpoint(args.checkpoint, model)
    db = MapDatabase(model_identity(model), build_info=info)
    loc = Localizer(model, db, reranker="none")
    photos = [f.load() for f in folder_frames(DATA / "database")]
    loc.add_images(photos, [Place(-1, f"p{i}") for i in range(len(photos))])
    local, global_ = loc.embed(photos[:4])
    rng = np.random.default_rng(0)
    while len(db) < args.places:  # filler: perturbed real features, so they look like places
        n = min(256, args.places - len(db))
        pick = rng.integers(0, 4, n)
        g = global_[pick] + rng.normal(0, 0.05, (n, global_.shape[1])).astype(np.float32)
        db.add(g, local.half().cpu().numpy()[pick])
    db.save(work / "map")
    params = {"/**": {"ros__parameters": {"map_path": str(work / "map"), "checkpoint": args.checkpoint,
                                          "backbone": args.backbone,
                                          "device": args.device, "reranker": args.reranker, "top_k": args.top_k,
                                          "image_topics": ["/bench/image"], "image_qos_reliability": "reliable",
                                          "min_time_gap_sec": 0.0,
                                          **({"runtime": "onnxruntime", "onnx_dir": args.onnx} if args.onnx else {}),
                                          **({"precision": args.precision} if args.precision else {}),
                                          **{k: json.loads(v) for k, v in (i.split("=", 1) for i in args.set)}}}}
    (work / "params.yaml").write_text(json.dumps(params))
    node = subprocess.Popen([sys.executable, "-m", "dhe_vpr_ros", "node", "--ros-args", "--params-file",
                             str(work / "params.yaml")], stdout=open(work / "node.log", "w"), stderr=subprocess.STDOUT)
    rclpy.init()
    probe = rclpy.create_node("latency_probe")
    pub = probe.create_publisher(Image, "/bench/image", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    answers, stages = {}, {}
    probe.create_subscription(Float64MultiArray, "/vpr_node/match",
                              lambda m: answers.setdefault(round(m.data[0], 3), time.monotonic()), 50)
    probe.create_subscription(DiagnosticArray, "/diagnostics", lambda m: stages.update(_stage_medians(m)), 10)
    while pub.get_subscription_count() == 0 or probe.count_publishers("/vpr_node/match") == 0:
        rclpy.spin_once(probe, timeout_sec=0.1)
    msgs = []
    for img in photos[:8]:
        msgs.append(Image(**rgb_to_fields(img, "rgb8")))

    def run(rate: float, seconds: float, t0: float):
        sent = {}
        cpu_before, answered_before = _cpu_seconds(node.pid), len(answers)
        start, n = time.monotonic(), 0
        while time.monotonic() - start < seconds:
            msg = msgs[n % len(msgs)]
            stamp = t0 + n * 0.001
            msg.header.stamp.sec, msg.header.stamp.nanosec = int(stamp), int(round((stamp % 1) * 1e9))
            sent[round(stamp, 3)] = time.monotonic()
            pub.publish(msg)
            n += 1
            end = start + n / rate
            while time.monotonic() < end:
                rclpy.spin_once(probe, timeout_sec=0.01)
        drain = time.monotonic() + 5
        while time.monotonic() < drain:
            rclpy.spin_once(probe, timeout_sec=0.05)
        lat = sorted((answers[k] - sent[k]) * 1e3 for k in sent if k in answers)
        done = len(lat)
        cpu_ms = (_cpu_seconds(node.pid) - cpu_before) * 1e3 / max(1, len(answers) - answered_before)
        return lat, done / seconds, n, cpu_ms
    import multiprocessing
    busy = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(args.busy_cores)]
    for proc in busy:
        proc.start()
    run(args.rate, 5.0, 100.0)  # warm-up
    lat, fps, n, cpu_at_rate = run(args.rate, args.seconds, 1000.0)
    stages_at_rate, stages = dict(stages), {}  # /diagnostics' medians over the frames at --rate, then at 30 Hz
    _, sustained, n_fast, cpu_fast = run(30.0, 15.0, 3000.0)
    for proc in busy:
        proc.kill()  # SIGKILL: a forked child keeps rclpy's SIGTERM handler
    node.send_signal(signal.SIGINT)
    node.wait(30)
    shutil.rmtree(work, ignore_errors=True)
    p95 = lat[min(len(lat) - 1, math.ceil(0.95 * len(lat)) - 1)]  # nearest rank
    print(f"{'map places':<12} {'device':<7} {'reranker':<9} {'busy':>5} {'rate Hz':>8} {'frames':>7} "
          f"{'median ms':>10} {'p95 ms':>8} {'sustained fps (30 Hz in)':>25}")
    print(f"{len(db):<12} {args.device:<7} {args.reranker:<9} {args.busy_cores:>5} {args.rate:>8.1f} {len(lat):>7} "
          f"{statistics.median(lat):>10.1f} {p95:>8.1f} {sustained:>25.2f}")
    for label, seen in ((f"{args.rate:g} Hz", stages_at_rate), ("30 Hz", stages)):  # builds that report stages
        if seen:
            print(f"stage p50 ms at {label} (the node's last 200 frames): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in sorted(seen.items())))
    rate_name = f"{args.rate:g}".replace(".", "_")
    print(f"CPU ms per frame answered: {cpu_at_rate:.1f} at {args.rate:g} Hz, {cpu_fast:.1f} at 30 Hz")
    print(f"node_latency_median_ms={statistics.median(lat):.1f} node_latency_p95_ms={p95:.1f} "
          f"sustained_fps={sustained:.2f}")
    print(f"cpu_ms_per_frame_{rate_name}hz={cpu_at_rate:.1f} cpu_ms_per_frame_30hz={cpu_fast:.1f}")
    for name, ms in sorted(stages_at_rate.items()):
        print(f"node_stage_{name}_ms_p50={ms:.1f}")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (/proc/PID/stat, fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stage_medians(message) -> dict:
    """{stage: p50 ms} from a DiagnosticArray of the node (``stage_<name>_ms_p50``; none from older builds)."""
    found = {}
    for status in message.status:
        for item in status.values:
            if item.key.startswith("stage_") and item.key.endswith("_ms_p50"):
                found[item.key[len("stage_"):-len("_ms_p50")]] = float(item.value)
    return found


if __name__ == "__main__":
    main()
