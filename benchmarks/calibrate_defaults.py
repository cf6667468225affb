#!/usr/bin/env python3
# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
r"""How the node's loop-closure defaults are chosen so that they transfer: leave one run out.

``calibrate`` tunes one user's run for one target; the package's defaults must hold on runs
nobody tuned them for. So this script records several labelled runs (reference / query folder
pairs from ``benchmarks/sequences.py``, frame i at place i, +-2 frames right) once, then for each
run in turn chooses the settings on ALL THE OTHERS and measures them on it (the fold table is
what a new user can expect), then chooses on all runs the same way, and prints what the node's
current defaults do on every run. A choice replaces the node's defaults only when the fold table
holds (every held-out run precise, no far loop closure): see doc/loop_closure.md.

Choosing on a set of runs (``dhe_vpr_ros.loop.transfer``): over a grid of sequence settings (length,
agreeing frames, distinctiveness ratio and neighbourhood) and every score threshold, keep the settings
under which every run has no loop closure more than 5 frames off and precision >= ``--precision``
(0.95; not 1.0: demanding every calibration run be perfect imports the worst aliasing of each into
all environments), then the highest worst-run recall over the runs the model recognises.

Each run is recorded once (the first 32 retrieved places of every query frame and every
re-ranker's score for each) and cached in ``--cache`` (``NAME.npz``); later calls replay the
cache. The per-re-ranker thresholds (``CALIBRATED_MIN_SCORE``) are chosen on all runs with the
sequence settings chosen for dhe.

    python benchmarks/calibrate_defaults.py --cache /tmp/cal \\
        --run gardens=seq/gardens --run nordland=seq/nordland --run gardens_overlay=seq/gardens_overlay

Prints the fold table, the choice on all runs, and ``name=value`` lines.
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dhe_vpr_ros.map.sources import folder_frames
from dhe_vpr_ros.loop.evaluation import FAR_FRAMES, Ranked, sequence_answers
from dhe_vpr_ros.loop.groundtruth import LabelledRun
from dhe_vpr_ros.method.identity import model_identity
from dhe_vpr_ros.method.localizer import Localizer
from dhe_vpr_ros.map.database import MapDatabase
from dhe_vpr_ros.map.records import Place
from dhe_vpr_ros.method.rerank import MIN_VERIFIED_INLIERS, RERANKERS, _order, _verified_order
from dhe_vpr_ros.loop.policy import CALIBRATED_MIN_SCORE, LoopPolicy
from dhe_vpr_ros.loop.transfer import choose, leave_one_run_out, run_figures
from dhe_vpr_ros.runtime.loading import load_model
from dhe_vpr_ros.runtime.threads import ThreadGovernor, configure_threads
from dhe_vpr_ros.loop.sequence import SequenceSettings

TOLERANCE = 2
DEPTH = 32  # retrieved and recorded per query; the node re-ranks its top_k of them


def record(folder: Path, rerankers, limit: int | None) -> dict:
    """Retrieval ids/similarities and each re-ranker's per-candidate scores, query by query."""
    configure_threads()  # as every command: threads from the free cores (a busy neighbour costs 10x otherwise)
    governor = ThreadGovernor()
    torch.set_grad_enabled(False)
    model, _ = load_model(None)
    loc = Localizer(model, MapDatabase(model_identity(model)), "cpu", "none", top_k=DEPTH)
    refs = folder_frames(folder / "reference")
    for start in range(0, len(refs), 32):
        batch = [f.load() for f in refs[start:start + 32]]
        loc.add_images(batch, [Place(-1, f"ref-{start + i}") for i in range(len(batch))])
    out = {"ids": [], "sims": [], **{r: [] for r in rerankers}}
    for frame in tqdm(folder_frames(folder / "queries")[:limit], desc=f"recording {folder.name}", unit="frame"):
        governor.adjust()
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


def single_frame_recall(data: dict, reranker: str, top_k: int) -> float:
    """Recall@1 of the run's single-frame answers (the re-ranker's first place within +-2 frames)."""
    frames = frames_of(data, reranker, top_k)
    return float(np.mean([abs(int(ids[0]) - q) <= TOLERANCE for q, (ids, _) in enumerate(frames)]))


FAMILIES = {
    "both": "inlier threshold and distinctiveness ratio",
    "inliers": "the raw inlier count alone (ratio off)",
    "ratio": "the distinctiveness ratio alone (scale-free: the best against its rivals outside the neighbourhood)",
}


def fold_table(rows: dict, recalls: dict, grid: list, precision: float, family: str) -> dict:
    """Leave one run out with the scores of ``family``: print each held-out run's figures under the
    settings chosen on the others; returns name=value lines."""
    subset = [i for i, g in enumerate(grid) if family != "inliers" or g.min_distinctiveness == 1.0]
    if family == "ratio":
        subset = [i for i in subset if grid[i].min_distinctiveness > 1.0]
    rows = {n: {i: r[i] for i in subset} for n, r in rows.items()}
    print(f"\n{FAMILIES[family]}:")
    print(f"{'held out':<18}{'chosen on the others':<52}{'precision':>10}{'recall':>8}{'far':>5}{'loops':>7}")
    lines = {}
    for fold in leave_one_run_out(rows, recalls, precision, lowest_threshold_only=family == "ratio"):
        if fold.choice is None:
            print(f"{fold.held_out:<18}(no setting keeps the others precise)")
            continue
        f = fold.figures
        print(f"{fold.held_out:<18}{describe(grid[fold.choice.setting], fold.choice.threshold):<52}"
              f"{f.precision:>10.3f}{f.recall:>8.3f}{f.far:>5}{f.loops:>7}")
        for key in ("precision", "recall", "far"):
            lines[f"{family}_fold_{fold.held_out}_{key}"] = round(getattr(f, key), 3)
    return lines


def shipped(rows: dict, recalls: dict, grid: list, data: dict, rerankers: list, args) -> dict:
    """The candidate defaults, chosen on every run; each re-ranker's threshold under dhe's sequence settings."""
    best = choose(rows, recalls, args.precision)
    if best is None:
        raise SystemExit("no setting keeps every run precise: nothing to ship")
    threshold, i = best.threshold, best.setting
    settings = grid[i]
    print(f"\nchosen on all runs ({FAMILIES['both']}): {describe(settings, threshold)}")
    for n in rows:
        f = run_figures(rows[n][i], threshold)
        print(f"  {n:<16} precision {f.precision:.3f} recall {f.recall:.3f} far {f.far}")
    lines = {"sequence_length": settings.length, "sequence_min_agreeing": settings.min_agreeing,
             "min_distinctiveness": settings.min_distinctiveness,
             "distinctiveness_neighbourhood": settings.neighbourhood, "min_score_dhe": round(threshold, 3)}
    for reranker in (r for r in rerankers if r != "dhe"):
        available = {n: d for n, d in data.items() if reranker == "none" or reranker in d}
        runs = {n: {0: verdicts(frames_of(d, reranker, args.top_k), settings)} for n, d in available.items()}
        found = choose(runs, {n: single_frame_recall(d, reranker, args.top_k) for n, d in available.items()},
                       args.precision)
        lines[f"min_score_{reranker}"] = round(found.threshold, 3) if found else "never"
        print(f"  {reranker}: min_score {lines[f'min_score_{reranker}']}")
    return lines


def node_defaults(data: dict, top_k: int) -> dict:
    """What the node's defaults as shipped (``SequenceSettings()``, the calibrated dhe threshold) do on
    every run: the figures to compare a new choice with before it replaces them."""
    settings, threshold = SequenceSettings(), CALIBRATED_MIN_SCORE["dhe"]
    print(f"\nthe node's defaults now: {describe(settings, threshold)}")
    lines = {}
    for n, d in data.items():
        f = run_figures(verdicts(frames_of(d, "dhe", top_k), settings), threshold)
        print(f"  {n:<16} precision {f.precision:.3f} recall {f.recall:.3f} far {f.far} loops {f.loops}")
        lines.update({f"now_{n}_precision": round(f.precision, 3), f"now_{n}_recall": round(f.recall, 3),
                      f"now_{n}_far": f.far})
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="NAME=FOLDER[:LIMIT]",
                        help="a folder with reference/ and queries/ (LIMIT: first N queries)")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--rerankers", default=",".join(RERANKERS))
    parser.add_argument("--top-k", type=int, default=16, help="the node's top_k")
    parser.add_argument("--precision", type=float, default=0.95)
    parser.add_argument("--families", default="both,inliers,ratio",
                        help=f"fold tables for these score families ({', '.join(FAMILIES)}); the defaults use 'both'")
    args = parser.parse_args()
    rerankers = args.rerankers.split(",")
    data = {}
    for spec in args.run:
        name, rest = spec.split("=", 1)
        folder, _, limit = rest.partition(":")
        data[name] = cached(args.cache, name, Path(folder), rerankers, int(limit) if limit else None)
    grid = [SequenceSettings(length=n, min_agreeing=min(a, n), min_distinctiveness=d, neighbourhood=r)
            for n, a, d, r in itertools.product((1, 2, 3, 4, 5, 6), (1, 2, 3), (1.0, 1.25, 1.5, 2.0, 2.5), (4, 6, 10))
            if a <= n or a == 1]
    dhe = {n: d for n, d in data.items() if "dhe" in d}
    recalls = {n: single_frame_recall(d, "dhe", args.top_k) for n, d in dhe.items()}
    rows = {n: {i: verdicts(frames_of(d, "dhe", args.top_k), g) for i, g in enumerate(grid)} for n, d in dhe.items()}
    print(f"{len(grid)} sequence settings x every threshold; single-frame Recall@1 (dhe): "
          + ", ".join(f"{n} {r:.3f}" for n, r in recalls.items()))
    lines = {}
    if len(rows) > 1:
        for family in args.families.split(","):
            lines.update(fold_table(rows, recalls, grid, args.precision, family))
    lines.update(shipped(rows, recalls, grid, data, rerankers, args))
    lines.update(node_defaults(dhe, args.top_k))
    print(" ".join(f"{k}={v}" for k, v in lines.items()))


def describe(g: SequenceSettings, threshold: float) -> str:
    return (f"length {g.length}, agreeing {g.min_agreeing}, ratio {g.min_distinctiveness:g} +-{g.neighbourhood}, "
            f"min_score {threshold:.1f}")


if __name__ == "__main__":
    main()
