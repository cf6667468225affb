#!/usr/bin/env python3
# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Real image sequences as folder pairs: ``OUT/<name>/reference/`` and ``OUT/<name>/queries/``,
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

``--overlay`` also writes ``<name>_overlay``: the same frames with a fisheye ring, a hood band
and a timestamp box (``synthetic.camera_overlay``), for the static-mask benchmarks.

    python benchmarks/sequences.py --cohog CoHOG_Results_RAL2019 --seqslam seqslam --out /tmp/seq --overlay
"""
from __future__ import annotations

import argparse
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


def write_pair(out: Path, name: str, reference: list[np.ndarray], queries: list[np.ndarray], overlay: bool) -> None:
    variants = [(name, lambda im: im)] + ([(f"{name}_overlay", camera_overlay)] if overlay else [])
    for folder, change in variants:
        for part, images in (("reference", reference), ("queries", queries)):
            target = out / folder / part
            target.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(images):
                cv2.imwrite(str(target / f"{i:05d}.png"), cv2.cvtColor(change(image), cv2.COLOR_RGB2BGR))
        print(f"{out / folder}: {len(reference)} reference and {len(queries)} query frames")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cohog", type=Path, help="checkout of MubarizZaffar/CoHOG_Results_RAL2019")
    parser.add_argument("--seqslam", type=Path, help="checkout of TimQuelch/seqslam")
    parser.add_argument("--start", type=int, default=0, help="nordland: first frame")
    parser.add_argument("--count", type=int, help="nordland: number of frames (default: all)")
    parser.add_argument("--step", type=int, default=1, help="nordland: every Nth frame")
    parser.add_argument("--overlay", action="store_true", help="also write versions with a camera overlay")
    args = parser.parse_args()
    if args.cohog:
        write_pair(args.out, "gardens", *gardens(args.cohog), args.overlay)
    if args.seqslam:
        suffix = "" if args.start == 0 and args.count is None and args.step == 1 else \
            f"_{args.start}_{args.count}_{args.step}"
        write_pair(args.out, "nordland" + suffix, *nordland(args.seqslam, args.start, args.count, args.step),
                   args.overlay)


if __name__ == "__main__":
    main()
