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
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from .. import DATA_DIR
from ..atomic import atomic_write
from ..map.building import add_frames
from ..map.database import MapDatabase
from ..map.sources import folder_frames
from ..method.identity import model_identity
from ..method.localizer import Candidate
from ..method.rerank import RERANKERS
from ..ros.debug_image import draw_match
from ..runtime import open_localizer
from .arguments import number

__all__ = ["DATA", "MARKER", "add_arguments", "claim_output", "run"]

DATA = DATA_DIR / "demo"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_output", help="where the map, picture and bag go")
    parser.add_argument("--reranker", default="dhe", choices=RERANKERS)
    parser.add_argument("--checkpoint", help="model checkpoint (default: the shipped model)")
    parser.add_argument("--timeout", type=number(0.0, 3600.0, above=True), default=60.0,
                        help="seconds to wait for each answer")


def run(args: argparse.Namespace) -> int:
    from ..ros.demo_client import play_queries, write_bag

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
    _write_text(params_file, json.dumps(params))
    results, failures, records = play_queries(params_file, out, args.timeout, folder_frames(DATA / "queries"))
    log.info("[3/4] results")
    right, right_global, n, panels = _report(args, database, results)
    log.info("[4/4] writing %s and %s", out / "matches.png", out / "session_bag")
    _write_picture(out / "matches.png", panels)
    write_bag(out / "session_bag", records)
    summary = {"recall@1": {args.reranker: 100.0 * right / n, "global_only": 100.0 * right_global / n},
               "queries": n, "answered": len(results), "seconds": time.monotonic() - start, "failures": failures}
    _write_text(out / "summary.json", json.dumps(summary, indent=2))
    sys.stdout.write(f"wrote {out / 'matches.png'}, {out / 'session_bag'} in {summary['seconds']:.0f} s\n")
    for failure in failures:
        log.error("%s", failure)
    return 1 if failures else 0


def _build_map(args: argparse.Namespace, out: Path):
    """The bundled reference photos -> out/map; returns the map and its number of places."""
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
    ok, picture = cv2.imencode(".png", cv2.cvtColor(np.concatenate(cols, axis=1), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"OpenCV could not encode {path}")
    with atomic_write(path) as handle:
        handle.write(picture.tobytes())


def _write_text(path: Path, text: str) -> None:
    """A file of the demo's folder, through the write door (atomic, the path named on failure)."""
    with atomic_write(path, mode="w") as handle:
        handle.write(text)


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
    _write_text(out / MARKER, "written by `python -m dhe_vpr_ros demo`; it replaces its own files here\n")
