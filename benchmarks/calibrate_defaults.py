#!/usr/bin/env python3
# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
r"""How the node's loop-closure defaults were chosen: jointly, on every real sequence at hand.

``calibrate`` tunes one user's run for one target; the package's defaults must hold on runs
nobody tuned them for. So this script replays several labelled runs (reference / query folder
pairs from ``benchmarks/sequences.py``, frame i at place i, +-2 frames right) through the node's
sequence verification and picks:

1. one set of sequence settings (length, agreeing frames, distinctiveness), chosen on the
   default re-ranker (dhe), and
2. per re-ranker, the lowest ``min_score`` such that on EVERY run no loop closure lies more
   than 5 frames off and precision is at least ``--precision`` (0.95), and the same still holds
   at 0.9 x that threshold (a margin for runs that were not measured),

maximising the mean recall over the runs. A re-ranker with no such threshold gets one that
nothing reaches (it publishes matches, never loop closures, unless the user calibrates it).

Each run is recorded once (the first 32 retrieved places of every query frame, in order, and
every re-ranker's score for each; the node re-ranks its top_k of them) and cached in ``--cache``
(``NAME.npz``: ``ids``, ``sims`` and one array per re-ranker); later runs of the script only
replay the cache. A cache may lack a re-ranker (RANSAC is slow: record a part of a long run
under another name); that re-ranker's threshold is then chosen on the runs that have it.

    python benchmarks/calibrate_defaults.py --cache /tmp/cal \\
        --run gardens=seq/gardens --run nordland=seq/nordland --run gardens_overlay=seq/gardens_overlay

Prints a table and ``name=value`` lines.
"""
from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path

import numpy as np
import torch

from dhe_vpr_ros.map.sources import folder_frames
from dhe_vpr_ros.loop.evaluation import FAR_FRAMES, Ranked, sequence_answers
from dhe_vpr_ros.loop.groundtruth import LabelledRun
from dhe_vpr_ros.method.identity import model_identity
from dhe_vpr_ros.method.localizer import Localizer
from dhe_vpr_ros.map.database import MapDatabase
from dhe_vpr_ros.map.records import Place
from dhe_vpr_ros.method.rerank import MIN_VERIFIED_INLIERS, RERANKERS, _order, _verified_order
from dhe_vpr_ros.loop.policy import LoopPolicy
from dhe_vpr_ros.runtime.loading import load_model
from dhe_vpr_ros.loop.sequence import SequenceSettings

TOLERANCE = 2
DEPTH = 32  # retrieved and recorded per query; the node re-ranks its top_k of them


def record(folder: Path, rerankers, limit: int | None) -> dict:
    """Retrieval ids/similarities and each re-ranker's per-candidate scores, query by query."""
    torch.set_grad_enabled(False)
    model, _ = load_model(None)
    loc = Localizer(model, MapDatabase(model_identity(model)), "cpu", "none", top_k=DEPTH)
    refs = folder_frames(folder / "reference")
    for start in range(0, len(refs), 32):
        batch = [f.load() for f in refs[start:start + 32]]
        loc.add_images(batch, [Place(-1, f"ref-{start + i}") for i in range(len(batch))])
    out = {"ids": [], "sims": [], **{r: [] for r in rerankers}}
    for frame in folder_frames(folder / "queries")[:limit]:
        image = frame.load()
        local, global_ = loc.embed([image])
        sims, ids = loc.retrieve(global_[0], DEPTH)
        out["ids"].append(ids)
        out["sims"].append(sims)
        for name in rerankers:
            result = loc.rank(local[0], global_[0], (image.shape[1], image.shape[0]), name, DEPTH,
                              retrieved=(sims, ids))
            by_id = {c.place_id: c.score for c in result.candidates}
            out[name].append([by_id.get(int(p), np.nan) for p in ids])
    return {k: np.array(v) for k, v in out.items()}


def cached(cache: Path, name: str, folder: Path, rerankers, limit) -> dict:
    """The run's recording: the cache file if there is one (a re-ranker it lacks is judged on the
    other runs only), else recorded now for every re-ranker and cached."""
    path = cache / f"{name}.npz"
    if path.is_file():
        return dict(np.load(path))
    data = record(folder, [r for r in rerankers if r != "none"], limit)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **data)
    return data


def frames_of(data: dict, reranker: str, top_k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each query's re-ranked candidates as the node has them (its top_k, in the re-ranker's order)."""
    ids, sims = data["ids"][:, :top_k], data["sims"][:, :top_k]
    scores = sims if reranker == "none" else data[reranker][:, :top_k]
    out = []
    for i in range(len(ids)):
        s = torch.from_numpy(np.nan_to_num(scores[i], nan=-1.0))
        order = (_verified_order(s, MIN_VERIFIED_INLIERS) if reranker == "dhe" else _order(s)).numpy()
        out.append((ids[i][order], scores[i][order]))
    return out


def verdicts(frames, settings: SequenceSettings) -> np.ndarray:
    """(Q, 3): sequence score where the frames agree and the place stands out (-inf elsewhere),
    right (within +-2 frames), far (more than 5 frames off): evaluate's own judgement."""
    positives = [np.arange(max(0, q - TOLERANCE), q + TOLERANCE + 1) for q in range(len(frames))]
    run = LabelledRun("calibration", [], [], positives, TOLERANCE)
    policy = LoopPolicy(sequence_length=settings.length, sequence_tolerance=settings.tolerance,
                        sequence_max_speed=settings.max_speed, sequence_min_agreeing=settings.min_agreeing,
                        min_distinctiveness=settings.min_distinctiveness,
                        distinctiveness_neighbourhood=settings.neighbourhood)
    answers = sequence_answers(run, [Ranked(ids, scores) for ids, scores in frames], policy, "dhe")
    return np.stack([answers.scores, answers.correct, answers.errors > FAR_FRAMES], axis=1).astype(np.float64)


def outcome(rows: np.ndarray, threshold: float) -> tuple[int, int, int]:
    accepted = rows[:, 0] >= threshold
    return int((accepted & (rows[:, 1] > 0)).sum()), int((accepted & (rows[:, 1] == 0)).sum()), \
        int((accepted & (rows[:, 2] > 0)).sum())


def feasible(runs: dict, threshold: float, precision: float) -> bool:
    for rows in runs.values():
        for t in (threshold, 0.9 * threshold):
            right, wrong, far = outcome(rows, t)
            if far or right + wrong and right / (right + wrong) < precision:
                return False
    return True


def best_threshold(runs: dict, precision: float) -> tuple[float, float] | None:
    """(threshold, mean recall) of the lowest feasible threshold, or None."""
    scores = np.unique(np.concatenate([r[np.isfinite(r[:, 0]), 0] for r in runs.values()]))
    for t in scores:  # ascending: the first feasible one has the most recall
        if t > 0 and feasible(runs, float(t), precision):
            recall = np.mean([outcome(r, t)[0] / len(r) for r in runs.values()])
            return float(t), float(recall)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="NAME=FOLDER[:LIMIT]",
                        help="a folder with reference/ and queries/ (LIMIT: first N queries)")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--rerankers", default=",".join(RERANKERS))
    parser.add_argument("--top-k", type=int, default=16, help="the node's top_k")
    parser.add_argument("--precision", type=float, default=0.95)
    args = parser.parse_args()
    rerankers = args.rerankers.split(",")
    data = {}
    for spec in args.run:
        name, rest = spec.split("=", 1)
        folder, _, limit = rest.partition(":")
        data[name] = cached(args.cache, name, Path(folder), rerankers, int(limit) if limit else None)
    grid = [SequenceSettings(length=n, min_agreeing=a, min_distinctiveness=d, neighbourhood=r)
            for n, a, d, r in itertools.product((2, 3, 4, 5), (2, 3, 4), (1.5, 2.0, 2.5, 3.0), (4, 6, 10)) if a <= n]
    chosen = None
    dhe_frames = {n: frames_of(d, "dhe", args.top_k) for n, d in data.items() if "dhe" in d}
    for settings in grid:  # the sequence settings, on dhe
        runs = {n: verdicts(f, settings) for n, f in dhe_frames.items()}
        found = best_threshold(runs, args.precision)
        if found:
            print(f"  length {settings.length} agreeing {settings.min_agreeing} distinctiveness "
                  f"{settings.min_distinctiveness:g} +-{settings.neighbourhood}: min_score {found[0]:.1f}, "
                  f"mean recall {found[1]:.3f}", flush=True)
        if found and (chosen is None or found[1] > chosen[2] + 1e-9):
            chosen = (settings, found[0], found[1])
    settings = chosen[0]
    print(f"sequence settings chosen on dhe: length {settings.length}, agreeing {settings.min_agreeing}, "
          f"distinctiveness {settings.min_distinctiveness:g} outside +-{settings.neighbourhood} places "
          f"(grid of {len(grid)}; mean recall {chosen[2]:.3f})")
    print(f"{'re-ranker':<9} {'min_score':>9}  " + "  ".join(f"{n:>24}" for n in data))
    lines = {"sequence_length": settings.length, "sequence_min_agreeing": settings.min_agreeing,
             "min_distinctiveness": settings.min_distinctiveness,
             "distinctiveness_neighbourhood": settings.neighbourhood}
    for reranker in rerankers:
        available = {n: d for n, d in data.items() if reranker == "none" or reranker in d}
        runs = {n: verdicts(frames_of(d, reranker, args.top_k), settings) for n, d in available.items()}
        found = best_threshold(runs, args.precision)
        threshold = found[0] if found else math.inf
        cells = []
        for n, rows in runs.items():
            right, wrong, far = outcome(rows, threshold)
            cells.append(f"R {right / len(rows):.3f} P {right / max(right + wrong, 1):.3f} far {far}")
        print(f"{reranker:<9} {threshold:>9.3g}  " + "  ".join(f"{c:>24}" for c in cells))
        lines[f"min_score_{reranker}"] = round(threshold, 3) if found else "never"
    print(" ".join(f"{k}={v}" for k, v in lines.items()))


if __name__ == "__main__":
    main()
