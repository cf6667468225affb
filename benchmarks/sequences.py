#!/usr/bin/env python3
# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
r"""Real image sequences as folder pairs: ``OUT/<name>/reference/`` and ``OUT/<name>/queries/``,
frame i of each at the same place, zero-padded names in route order. What ``evaluate
--reference/--queries``, ``calibrate`` and ``benchmarks/loop_replay.py`` take.

Sources (public GitHub repositories, fetched beforehand; nothing is downloaded here):

* ``gardens``: GardensPoint walking, day against day from the other side of the path: the
  query and ground-truth panels of ``MubarizZaffar/CoHOG_Results_RAL2019`` (commit 7c12fb1),
  Gardens_Point/ figures, cropped (about 100 x 56 px; see ``recall_real.py``); 195 frames.
* ``nordland``: the Nordland railway, winter queries against a summer map, 64 x 32 px
  grayscale with a burnt-in timestamp, every 10th frame of the original: ``TimQuelch/seqslam``
  (commit 38311ac) ``datasets/nordland_trimmed``; 3576 frames (``--start``/``--count``/``--step``
  take a part).

* ``kitti07_shifted``: KITTI odometry 07, frames 0-159 of ``image_0`` (1226 x 370 grayscale, 10 Hz):
  ``mint-lab/3dv_tutorial`` (commit c9b04a9, ``data/KITTI07``; KITTI is CC BY-NC-SA 3.0: benchmark
  use only, never in this repository). The same route from a shifted viewpoint: the map holds every
  4th frame (0, 4, ..., 156), the queries are the frames 2 later (2, 6, ..., 158).
* ``kitti07_drive``: the same 160 frames as one drive (``frames/`` and ``stamps.txt``, KITTI's own
  times in seconds): a run that never returns, for ``loop_replay.py --drive``.
* ``euroc_shifted`` and ``euroc_stereo``: EuRoC V1_01's first 95 stereo pairs (752 x 480, 20 Hz)
  from ``MIT-SPARK/Kimera-VIO`` (commit ce8c59b, ``tests/data/MicroEurocDataset``; ETH ASL's
  licence: research use). The camera rests on the floor for these 4.75 s (under 1.5 px of motion
  between the first and the last frame), so every map place is the right one ("static" truth):
  ``euroc_shifted`` maps every 4th cam0 frame and queries the cam0 frames 2 later;
  ``euroc_stereo`` maps every cam0 frame and queries the cam1 frame of the same instant.
* ``euroc_loops``: the loop-closure sample of the same repository (``tests/data/ForLoopClosureDetector``,
  EuRoC, 752 x 480): two places seen twice from viewpoints far apart (left images 0 and 2 the map,
  1 and 3 the queries, as Kimera's own test pairs them); ``{"tolerance": 0}``. Not used to choose any
  default: a run the defaults never saw.

Every run folder gets ``truth.json``: ``{"tolerance": 2}`` (query i is right at places i-2 .. i+2,
far beyond 5) or ``{"static": true}`` (every place is right), and ``{"resolution": "thumbnail"}``
for the thumbnail runs (GardensPoint crops, Nordland), which bind precision, not recall.

``--overlay`` also writes ``<name>_overlay``: the same frames with a fisheye ring, a hood band
and a timestamp box (``synthetic.camera_overlay``), for the static-mask benchmarks.

    python benchmarks/sequences.py --cohog CoHOG_Results_RAL2019 --seqslam seqslam --out /tmp/seq --overlay \
        --kitti 3dv_tutorial --kimera Kimera-VIO
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recall_real import crop_figures  # noqa: E402

from dhe_vpr_ros.training.synthetic import camera_overlay  # noqa: E402


def gardens(cohog: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    queries, truths, _ = crop_figures(cohog / "Gardens_Point")
    return truths, queries


def nordland(seqslam: Path, start: int, count: int | None, step: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    root = seqslam / "datasets" / "nordland_trimmed"
    names = sorted(p.name for p in (root / "summer").glob("*.png"))
    names = names[start::step][:count]

    def load(season, name):
        return cv2.cvtColor(cv2.imread(str(root / season / name)), cv2.COLOR_BGR2RGB)
    return [load("summer", n) for n in names], [load("winter", n) for n in names]


SHIFT_STEP, SHIFT_OFFSET = 4, 2  # shifted viewpoint: a map of every 4th frame, queries 2 frames later


def kitti(root: Path) -> list[np.ndarray]:
    """KITTI 07 frames 0-159 (RGB)."""
    names = sorted((root / "data" / "KITTI07" / "image_0").glob("*.png"))[:160]
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in names]


def kitti_stamps(root: Path, count: int) -> list[float]:
    return [float(v) for v in (root / "data" / "KITTI07" / "times.txt").read_text().split()[:count]]


def euroc(root: Path, camera: str) -> list[np.ndarray]:
    folder = root / "tests" / "data" / "MicroEurocDataset" / "mav0" / camera / "data"
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(folder.glob("*.png"))]


def euroc_loops(root: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(map, queries) of Kimera's loop-closure sample: left images 0, 2 and the revisits 1, 3."""
    folder = root / "tests" / "data" / "ForLoopClosureDetector"
    frames = [cv2.cvtColor(cv2.imread(str(folder / f"left_img_{i}.png")), cv2.COLOR_BGR2RGB) for i in range(4)]
    return frames[0::2], frames[1::2]


def shifted(frames: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(map, queries): every SHIFT_STEP-th frame, and the frames SHIFT_OFFSET later."""
    reference = frames[::SHIFT_STEP]
    queries = frames[SHIFT_OFFSET::SHIFT_STEP]
    return reference[:len(queries)], queries


def write_images(target: Path, images: list[np.ndarray], change=lambda im: im) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        cv2.imwrite(str(target / f"{i:05d}.png"), cv2.cvtColor(change(image), cv2.COLOR_RGB2BGR))


def write_pair(out: Path, name: str, reference: list[np.ndarray], queries: list[np.ndarray], overlay: bool,
               truth: dict | None = None) -> None:
    variants = [(name, lambda im: im)] + ([(f"{name}_overlay", camera_overlay)] if overlay else [])
    for folder, change in variants:
        for part, images in (("reference", reference), ("queries", queries)):
            write_images(out / folder / part, images, change)
        (out / folder / "truth.json").write_text(json.dumps(truth or {"tolerance": 2}) + "\n")
        print(f"{out / folder}: {len(reference)} reference and {len(queries)} query frames")


def write_drive(out: Path, name: str, frames: list[np.ndarray], stamps: list[float]) -> None:
    """One drive: ``frames/`` in order and ``stamps.txt`` (seconds, one a line)."""
    write_images(out / name / "frames", frames)
    (out / name / "stamps.txt").write_text("".join(f"{s:.6f}\n" for s in stamps))
    (out / name / "truth.json").write_text(json.dumps({"never_returns": True}) + "\n")
    print(f"{out / name}: one drive of {len(frames)} frames over {stamps[-1] - stamps[0]:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cohog", type=Path, help="checkout of MubarizZaffar/CoHOG_Results_RAL2019")
    parser.add_argument("--seqslam", type=Path, help="checkout of TimQuelch/seqslam")
    parser.add_argument("--start", type=int, default=0, help="nordland: first frame")
    parser.add_argument("--count", type=int, help="nordland: number of frames (default: all)")
    parser.add_argument("--step", type=int, default=1, help="nordland: every Nth frame")
    parser.add_argument("--kitti", type=Path, help="checkout of mint-lab/3dv_tutorial (data/KITTI07)")
    parser.add_argument("--kimera", type=Path, help="checkout of MIT-SPARK/Kimera-VIO (tests/data/MicroEurocDataset)")
    parser.add_argument("--overlay", action="store_true", help="also write versions with a camera overlay")
    args = parser.parse_args()
    thumbnail = {"tolerance": 2, "resolution": "thumbnail"}
    if args.cohog:
        write_pair(args.out, "gardens", *gardens(args.cohog), args.overlay, thumbnail)
    if args.seqslam:
        suffix = "" if args.start == 0 and args.count is None and args.step == 1 else \
            f"_{args.start}_{args.count}_{args.step}"
        write_pair(args.out, "nordland" + suffix, *nordland(args.seqslam, args.start, args.count, args.step),
                   args.overlay, thumbnail)
    if args.kitti:
        frames = kitti(args.kitti)
        write_pair(args.out, "kitti07_shifted", *shifted(frames), False)
        write_drive(args.out, "kitti07_drive", frames, kitti_stamps(args.kitti, len(frames)))
    if args.kimera:
        cam0, cam1 = euroc(args.kimera, "cam0"), euroc(args.kimera, "cam1")
        write_pair(args.out, "euroc_shifted", *shifted(cam0), False, {"static": True})
        write_pair(args.out, "euroc_stereo", cam0, cam1, False, {"static": True})
        write_pair(args.out, "euroc_loops", *euroc_loops(args.kimera), False, {"tolerance": 0})


if __name__ == "__main__":
    main()
