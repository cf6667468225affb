#!/usr/bin/env python3
# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Recall@1/5 on real place data available offline, re-rankers side by side.

* ``demo``: the 14 bundled queries against the 14 bundled places (7 real second views, 7
  synthetic; see data/demo/SOURCES.md).
* GardensPoint, ESSEX3IN1 and SPEDTest from ``MubarizZaffar/CoHOG_Results_RAL2019`` (give the
  checkout with ``--cohog DIR``): each of its result figures shows a query, CoHOG's retrieval
  and the ground-truth image side by side, about 100 px wide each. The query and ground-truth
  panels are cropped out (the retrieval is not used): the map is every ground-truth crop, and
  query i is right when place i is retrieved. Low-resolution crops of figures, not the
  datasets themselves: numbers are comparable between re-rankers, not with published ones.

    python benchmarks/recall_real.py --cohog /path/to/CoHOG_Results_RAL2019 [--checkpoint CKPT]

Prints a table, then ``name=value`` lines (``recall1_<set>_<reranker>``, and the precision of
the first-ranked places: ``r100p_<set>_<reranker>`` recall at 100 % precision and
``ap_<set>_<reranker>`` average precision, from each query's first place and its score).
"""
from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from dhe_vpr_ros.map.sources import folder_frames
from dhe_vpr_ros.commands.demo import DATA
from dhe_vpr_ros.method.identity import model_identity
from dhe_vpr_ros.method.localizer import Localizer
from dhe_vpr_ros.map.database import MapDatabase
from dhe_vpr_ros.map.records import Place
from dhe_vpr_ros.loop.precision import precision_curve, summarize
from dhe_vpr_ros.runtime.loading import load_any_model
from dhe_vpr_ros.runtime.threads import configure_threads

RERANKERS = ("none", "ransac", "magsac", "dhe")
COHOG_SETS = {"GardensPoint": "Gardens_Point", "ESSEX3IN1": "ESSEX3IN1", "SPEDTest": "SPED_Test"}


def _runs(mask: np.ndarray, min_length: int) -> list[tuple[int, int]]:
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return []
    groups = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)
    return [(int(g[0]), int(g[-1]) + 1) for g in groups if len(g) >= min_length]


def panel_geometry(image: np.ndarray):
    """(rows, [3 column ranges]) of the three pictures in a result figure, or None."""
    non_white = image.astype(int).sum(2) < 3 * 235
    rows = max(_runs(non_white.mean(1) > 0.45, 10), key=lambda r: r[1] - r[0], default=None)
    if rows is None:
        return None
    columns = _runs(non_white[rows[0]:rows[1]].mean(0) > 0.5, 20)
    return (rows, tuple(columns)) if len(columns) == 3 else None


def crop_figures(folder: Path) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """(query crops, ground-truth crops, figures skipped). Column ranges are the most common
    layout among figures of the same width (a dark picture edge can split a column)."""
    files = sorted(folder.glob("*.jpg"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)
    images = [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files]
    geometry = [panel_geometry(im) for im in images]
    layouts = collections.defaultdict(collections.Counter)
    for im, g in zip(images, geometry):
        if g is not None:
            layouts[im.shape[1]][g[1]] += 1
    queries, truths, skipped = [], [], 0
    for im, g in zip(images, geometry):
        if g is None or not layouts[im.shape[1]]:
            skipped += 1
            continue
        columns = layouts[im.shape[1]].most_common(1)[0][0]
        (y0, y1), (q, _, t) = g[0], columns
        queries.append(im[y0:y1, q[0]:q[1]].copy())
        truths.append(im[y0:y1, t[0]:t[1]].copy())
    return queries, truths, skipped


def demo_set():
    def load(part):
        return [f.load() for f in folder_frames(DATA / part)]
    return load("queries"), load("database"), 0


def recalls(model, device, queries, places, top_k: int, rerankers=RERANKERS) -> tuple[dict, dict, dict]:
    """Recall@1 and @5 (percent) per re-ranker, mean re-ranking ms per query, and the precision
    figures of the first-ranked places (``precision.summarize``)."""
    loc = Localizer(model, MapDatabase(model_identity(model)), device, "dhe", top_k=top_k)
    for start in range(0, len(places), 16):
        batch = places[start:start + 16]
        loc.add_images(batch, [Place(-1, f"place-{start + i}") for i in range(len(batch))])
    hits = {name: {1: 0, 5: 0} for name in rerankers}
    firsts = {name: ([], []) for name in rerankers}  # (score, right) of each query's first place
    times = dict.fromkeys(rerankers, 0.0)
    for i, image in enumerate(queries):
        local, global_ = loc.embed([image])
        retrieved = loc.retrieve(global_[0], top_k)
        for name in rerankers:
            start = time.perf_counter()
            result = loc.rank(local[0], global_[0], (image.shape[1], image.shape[0]), name, top_k, retrieved=retrieved)
            times[name] += time.perf_counter() - start
            ranked = [c.place_id for c in result.candidates]
            for n in (1, 5):
                hits[name][n] += int(i in ranked[:n])
            firsts[name][0].append(result.candidates[0].score if ranked else float("nan"))
            firsts[name][1].append(bool(ranked) and ranked[0] == i)
    n = max(len(queries), 1)
    precision = {name: summarize(precision_curve(s, c, [True] * len(s))) for name, (s, c) in firsts.items()}
    return ({name: {k: 100.0 * v / n for k, v in h.items()} for name, h in hits.items()},
            {name: 1e3 * t / n for name, t in times.items()}, precision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohog", type=Path, help="checkout of MubarizZaffar/CoHOG_Results_RAL2019")
    parser.add_argument("--checkpoint", help="default: the shipped model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runtime", default="torch", choices=("torch", "onnxruntime", "auto"),
                        help="torch (default), or the export in --onnx through onnxruntime")
    parser.add_argument("--onnx", help="with --runtime onnxruntime: the folder `export` wrote")
    parser.add_argument("--precision", default="float", choices=("float", "int8"),
                        help="int8: the export's int8 backbone (`export --int8`)")
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument("--rerankers", default=",".join(RERANKERS), help="comma-separated, from " + ",".join(RERANKERS))
    parser.add_argument("--sets", default="demo," + ",".join(COHOG_SETS), help="comma-separated sets to run")
    args = parser.parse_args()
    rerankers = tuple(args.rerankers.split(","))
    configure_threads()  # as every command: threads from the free cores
    torch.set_grad_enabled(False)
    device = torch.device(args.device)
    model, _ = load_any_model(args.checkpoint, None, device, None, args.runtime, args.onnx, None, args.precision)
    chosen = set(args.sets.split(","))
    sets = {"demo": demo_set()} if "demo" in chosen else {}
    if args.cohog:
        for name, folder in COHOG_SETS.items():
            if name in chosen and (args.cohog / folder).is_dir():
                sets[name] = crop_figures(args.cohog / folder)
    print(f"{'set':<14}{'queries':>8}{'places':>8}{'skipped':>8}  {'re-ranker':<8}{'R@1':>7}{'R@5':>7}"
          f"{'R@100P':>8}{'AP':>7}{'ms/query':>10}")
    lines = {}
    for name, (queries, places, skipped) in sets.items():
        recall, ms, precision = recalls(model, device, queries, places, args.top_k, rerankers)
        for reranker in rerankers:
            r, p = recall[reranker], precision[reranker]
            print(f"{name:<14}{len(queries):>8}{len(places):>8}{skipped:>8}  {reranker:<8}{r[1]:>7.1f}{r[5]:>7.1f}"
                  f"{p.recall_at_100_precision:>8.3f}{p.average_precision:>7.3f}{ms[reranker]:>10.1f}")
            lines[f"recall1_{name}_{reranker}"] = f"{r[1]:.1f}"
            lines[f"recall5_{name}_{reranker}"] = f"{r[5]:.1f}"
            lines[f"r100p_{name}_{reranker}"] = f"{p.recall_at_100_precision:.3f}"
            lines[f"ap_{name}_{reranker}"] = f"{p.average_precision:.3f}"
    for key, value in lines.items():
        print(f"{key}={value}")


if __name__ == "__main__":
    main()
