#!/usr/bin/env python3
# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
r"""How the node's loop-closure defaults are chosen so that they transfer: leave one run out, over folds.

``calibrate`` tunes one user's run for one target; the package's defaults must hold on runs nobody
tuned them for. The folds (``benchmarks/folds.py``) play four real runs the ways a robot meets them:
revisits across conditions (GardensPoint and Nordland: thumbnails, they bind precision and far only),
the same route from a shifted viewpoint and a stereo pair's other camera (KITTI 07, EuRoC: camera
resolution, their recall is the objective), a run that never returns (KITTI 07 through the online
node), every run's frames against every other run's map, and each run played as one drive that
returns. Every fold is recorded once (the node's top 16 places of every frame, each re-ranker's scores
of them, and their two-view inliers with the frame) and cached in ``--cache``.

Four families of settings (issue 32): (i) today's verification (sequence, distinctiveness ratio and
score threshold), (ii) sequence and threshold without the distinctiveness gate, (iii) (ii) with the
two-view check, (iv) a single frame with the two-view check. For each family and each run, the
settings are chosen on the folds that do not use that run (``dhe_vpr_ros.loop.transfer``: no loop
closure more than 5 frames off and precision >= ``--precision`` on every fold, none at all on the
folds that must stay silent, then the highest worst recall over the camera-resolution revisit folds;
thresholds from ``MIN_VERIFIED_INLIERS`` up, the inlier count below which a score is no geometric
evidence) and measured on the folds that do: the fold table is what a new user can expect. The winner is the
family whose every held-out fold holds, with the highest worst held-out camera-resolution recall; its
choice on all folds becomes the defaults, and each other re-ranker's threshold is chosen under them.

    python benchmarks/sequences.py --out seq --cohog ... --seqslam ... --kitti ... --kimera ...
    python benchmarks/calibrate_defaults.py --seq seq --cache /tmp/folds

Prints the fold tables, the choice, what the node's current defaults do on every fold, and ``name=value``
lines.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import folds as F  # noqa: E402

from dhe_vpr_ros.loop.policy import CALIBRATED_MIN_SCORE, LoopPolicy  # noqa: E402
from dhe_vpr_ros.loop.sequence import SequenceSettings  # noqa: E402
from dhe_vpr_ros.loop.transfer import choose, leave_one_run_out, run_figures  # noqa: E402
from dhe_vpr_ros.method.rerank import MIN_VERIFIED_INLIERS  # noqa: E402

FLOOR = float(MIN_VERIFIED_INLIERS)  # inlier counts below this are no geometric evidence: no lower threshold

INLIERS = (40, 30, 25, 20, 15, 10, 0)  # two-view minimums tried (stricter first: ties go to the earlier)
FAMILIES = {
    "i": ("today's verification: sequence, distinctiveness ratio, threshold", lambda g, m: m == 0),
    "ii": ("sequence and threshold, no distinctiveness gate",
           lambda g, m: m == 0 and g.min_distinctiveness == 1.0 and g.length >= 2),
    "iii": ("(ii) + the two-view check", lambda g, m: m > 0 and g.min_distinctiveness == 1.0 and g.length >= 2),
    "iv": ("single frame + the two-view check", lambda g, m: m > 0 and g.length == 1 and g.min_distinctiveness == 1.0),
}


def sequence_grid() -> list[SequenceSettings]:
    """Sequence settings, cheapest first (a window of 1 frame, then longer; the ratio off, then stricter)."""
    out = []
    for n, a, d, r in itertools.product((1, 2, 3, 4, 5, 6), (1, 2, 3), (1.0, 1.25, 1.5, 2.0, 2.5), (4, 6, 10)):
        if a > n or d == 1.0 and r != 6:
            continue
        out.append(SequenceSettings(length=n, min_agreeing=a, min_distinctiveness=d, neighbourhood=r))
    return out


class Tables(Mapping):
    """One fold's verdict tables for the settings ``keys`` ((sequence index, two-view minimum) pairs of
    ``settings``), computed when asked for; the sequence verification of each setting runs once."""

    def __init__(self, fold: F.Fold, data: dict, frames, grid, settings, keys, memo: dict):
        self.fold, self.data, self.frames, self.grid = fold, data, frames, grid
        self.settings, self.keys, self.memo = settings, keys, memo

    def __iter__(self):
        return iter(self.keys)

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, key: int) -> np.ndarray:
        g, m = self.settings[key]
        if g not in self.memo:
            self.memo[g] = F.sequence_verdicts(self.frames, self.grid[g])
        return F.verdict_table(self.fold, self.data, self.memo[g], m)


def describe(g: SequenceSettings, m: int, threshold: float) -> str:
    ratio = f"ratio {g.min_distinctiveness:g} +-{g.neighbourhood}" if g.min_distinctiveness > 1 else "no ratio"
    return (f"length {g.length}, agreeing {g.min_agreeing}, {ratio}, "
            f"{f'two-view >= {m}' if m else 'no two-view'}, min_score {threshold:.1f}")


def tables_for(folds, data, reranker: str, grid, settings, keys, memos) -> dict:
    return {f.name: Tables(f, data[f.name], F.node_frames(data[f.name], reranker), grid, settings, keys,
                           memos.setdefault((f.name, reranker), {})) for f in folds}


def family_table(name: str, folds, runs: dict, grid, settings, precision: float) -> dict:
    """Leave one run out within one family: print each held-out fold's figures; returns a summary."""
    specs = {f.name: f.spec for f in folds}
    camera = {f.name for f in folds if f.spec.objective}
    print(f"\n({name}) {FAMILIES[name][0]}")
    print(f"{'held out':<10}{'fold':<30}{'kind':<18}{'precision':>10}{'recall':>8}{'far':>5}{'loops':>7}")
    holds, worst, lines = True, 1.0, {}
    for fold in leave_one_run_out(runs, specs, precision, floor=FLOOR):
        if fold.choice is None:
            print(f"{fold.held_out:<10}(no setting keeps the other runs' folds precise)")
            holds, worst = False, 0.0
            continue
        g, m = settings[fold.choice.setting]
        print(f"{fold.held_out:<10}chosen on the others: {describe(grid[g], m, fold.choice.threshold)}")
        for fname, f in fold.figures.items():
            kind = F.describe_fold(next(x for x in folds if x.name == fname))
            ok = f.far == 0 and f.precision >= precision
            holds &= ok
            if fname in camera:
                worst = min(worst, f.recall)
            print(f"{'':<10}{fname:<30}{kind:<18}{f.precision:>10.3f}{f.recall:>8.3f}{f.far:>5}{f.loops:>7}"
                  f"{'' if ok else '  FAILS'}")
            key = f"{name}_{fold.held_out}_{fname.replace(':', '_')}"
            lines.update({f"{key}_precision": round(f.precision, 3), f"{key}_recall": round(f.recall, 3),
                          f"{key}_far": f.far})
    print(f"every held-out fold holds: {'yes' if holds else 'no'}; worst held-out camera-resolution recall "
          f"{worst:.3f}")
    return {"holds": holds, "worst": worst, "lines": lines}


def figures_on_all(folds, runs: dict, key: int, threshold: float, title: str) -> dict:
    print(f"\n{title}")
    lines = {}
    for f in folds:
        fig = run_figures(runs[f.name][key], threshold)
        print(f"  {f.name:<30}{F.describe_fold(f):<18}precision {fig.precision:.3f} recall {fig.recall:.3f} "
              f"far {fig.far} loops {fig.loops}")
        lines.update({f"{f.name.replace(':', '_')}_precision": round(fig.precision, 3),
                      f"{f.name.replace(':', '_')}_recall": round(fig.recall, 3)})
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=Path, required=True, help="the folder benchmarks/sequences.py wrote")
    parser.add_argument("--cache", type=Path, required=True, help="recordings of the folds (NAME.npz)")
    parser.add_argument("--precision", type=float, default=0.95)
    parser.add_argument("--nordland", type=int, default=1000, help="Nordland frames used (its first N)")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--onnx", help="record with this export in onnxruntime (give another --cache)")
    parser.add_argument("--model-precision", default="float", choices=("float", "int8"),
                        help="with --onnx: its float or int8 backbone")
    args = parser.parse_args()
    folds = F.folds(args.seq, nordland=args.nordland)
    recorder = []
    make = (lambda: F.Recorder(args.onnx, args.model_precision))
    data = {f.name: F.cached(lambda: recorder[0] if recorder else recorder.append(make()) or recorder[0], f,
                             args.cache) for f in folds}
    grid = sequence_grid()
    settings = [(g, m) for g in range(len(grid)) for m in INLIERS]
    memos: dict = {}
    print(f"{len(folds)} folds, {len(grid)} sequence settings x {len(INLIERS)} two-view minimums x every threshold")
    results, lines = {}, {}
    for name in args.families.split(","):
        keys = [i for i, (g, m) in enumerate(settings) if FAMILIES[name][1](grid[g], m)]
        runs = tables_for(folds, data, "dhe", grid, settings, keys, memos)
        results[name] = family_table(name, folds, runs, grid, settings, args.precision)
        lines.update(results[name]["lines"])
        lines[f"{name}_holds"], lines[f"{name}_worst_camera_recall"] = results[name]["holds"], \
            round(results[name]["worst"], 3)
    winner = max((n for n in results if results[n]["holds"]), key=lambda n: results[n]["worst"], default=None)
    specs = {f.name: f.spec for f in folds}
    if winner is not None:
        keys = [i for i, (g, m) in enumerate(settings) if FAMILIES[winner][1](grid[g], m)]
        runs = tables_for(folds, data, "dhe", grid, settings, keys, memos)
        best = choose(runs, specs, args.precision, floor=FLOOR)
        g, m = settings[best.setting]
        print(f"\nwinner: ({winner}); chosen on every fold: {describe(grid[g], m, best.threshold)}")
        figures_on_all(folds, runs, best.setting, best.threshold, "the winner's choice on every fold:")
        lines.update({"winner": winner, "sequence_length": grid[g].length,
                      "sequence_min_agreeing": grid[g].min_agreeing,
                      "min_distinctiveness": grid[g].min_distinctiveness,
                      "distinctiveness_neighbourhood": grid[g].neighbourhood, "verify_min_inliers": m,
                      "min_score_dhe": round(best.threshold, 3)})
        for reranker in F.RERANKERS[1:]:
            other = tables_for(folds, data, reranker, grid, settings, [best.setting], memos)
            found = choose(other, specs, args.precision, floor=FLOOR)
            lines[f"min_score_{reranker}"] = round(found.threshold, 3) if found else "never"
            print(f"  {reranker} under these settings: min_score {lines[f'min_score_{reranker}']}"
                  + (f" (worst camera-resolution recall {found.worst_recall:.3f})" if found else ""))
    now = LoopPolicy()
    g_now = next((i for i, g in enumerate(grid) if g == now.sequence()), None)
    if g_now is not None:
        key = settings.index((g_now, 0 if now.verify_min_inliers == 0 else now.verify_min_inliers))
        runs = tables_for(folds, data, "dhe", grid, settings, [key], memos)
        title = describe(grid[g_now], now.verify_min_inliers, CALIBRATED_MIN_SCORE["dhe"])
        figures_on_all(folds, runs, key, CALIBRATED_MIN_SCORE["dhe"], f"the node's defaults now: {title}")
    print(" ".join(f"{k}={v}" for k, v in lines.items()))


if __name__ == "__main__":
    main()
