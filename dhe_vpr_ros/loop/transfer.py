# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Choosing loop-closure settings that transfer to runs nobody tuned them on: leave one run out.

The input is a verdict table per fold and candidate setting: an array (Q, 3) of each query frame's
sequence score (-inf where the verifier gave no answer), whether its place is right and whether it
is far (more than 5 frames off); a 4th column, where given, says whether the frame has a true place
to be found (recall counts those frames only; without it every frame has one). A fold is one way of
playing real frames (a revisit, the same route from a shifted viewpoint, a run that never returns,
frames against the map of another place, one drive that returns); ``FoldSpec`` says which real runs
it uses, whether its recall is what the choice maximises (camera-resolution revisits; thumbnails and
runs that must stay silent only bind precision and far) and whether it must stay silent (every loop
closure on it is false). No model or map is needed here, so the selection is tested on small
synthetic tables with known answers.

Choosing on a set of folds: keep the settings and thresholds under which every fold has no far loop
closure and precision >= the target (a silent fold: no loop closure at all), then the highest worst
recall over the objective folds; ties go to the earlier setting (list settings from the cheapest) and
then the higher threshold. The thresholds tried are the scores the folds give and ``floor``, the
lowest score that means anything (where another gate, such as the two-view check, already keeps
every fold safe, the threshold is the floor, not the lowest score these runs happened to give).
Leaving one run out: every fold that uses the run is held out together (an off-map pairing uses two
runs), the choice is made on the folds that do not use it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Choice", "Fold", "FoldSpec", "RunFigures", "choose", "leave_one_run_out", "run_figures"]


@dataclass(frozen=True)
class FoldSpec:
    """``sources``: the real runs whose frames the fold plays; ``objective``: its recall is maximised;
    ``silent``: every loop closure on it is false (a run that never returns, another place's map)."""

    sources: tuple[str, ...]
    objective: bool = True
    silent: bool = False


@dataclass(frozen=True)
class RunFigures:
    """One fold's loop closures at one threshold."""

    precision: float
    recall: float
    far: int
    loops: int


@dataclass(frozen=True)
class Choice:
    """The chosen setting (its index in the caller's list) and score threshold."""

    setting: int
    threshold: float
    worst_recall: float


@dataclass(frozen=True)
class Fold:
    """A run held out: the choice made on the folds without it, and what it does on each fold with it."""

    held_out: str
    choice: Choice | None
    figures: dict[str, RunFigures] = field(default_factory=dict)


def _positive(verdicts: np.ndarray) -> np.ndarray:
    """(Q,) frames with a true place to be found (recall counts them only)."""
    return verdicts[:, 3] > 0 if verdicts.shape[1] > 3 else np.ones(len(verdicts), bool)


def run_figures(verdicts: np.ndarray, threshold: float) -> RunFigures:
    """Precision, recall, far and all loop closures of one fold (``verdicts`` (Q, 3 or 4)) at ``threshold``."""
    accepted = verdicts[:, 0] >= threshold
    right = accepted & (verdicts[:, 1] > 0)
    wrong = int((accepted & (verdicts[:, 1] == 0)).sum())
    far = int((accepted & (verdicts[:, 2] > 0)).sum())
    positive = _positive(verdicts)
    loops = int(right.sum()) + wrong
    return RunFigures(int(right.sum()) / loops if loops else 1.0,
                      int((right & positive).sum()) / max(int(positive.sum()), 1), far, loops)


def _counts_at(verdicts: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, ...]:
    """(right, wrong, far, found) loop closures of one fold at each threshold, all at once (found: right
    ones of frames with a true place, recall's numerator)."""
    order = np.argsort(-verdicts[:, 0], kind="stable")
    scores = verdicts[order, 0]
    right_rows = verdicts[order, 1] > 0
    right = np.r_[0, np.cumsum(right_rows)]
    found = np.r_[0, np.cumsum(right_rows & _positive(verdicts)[order])]
    far = np.r_[0, np.cumsum(verdicts[order, 2] > 0)]
    accepted = np.searchsorted(-scores, -thresholds, side="right")  # scores >= t
    return right[accepted], accepted - right[accepted], far[accepted], found[accepted]


def _judge_setting(tables: dict[str, np.ndarray], judged: list[str], precision: float,
                   lowest_threshold_only: bool, floor: float | None = None) -> tuple[float, float] | None:
    """(worst objective recall, threshold) at the lowest threshold that keeps every fold precise and
    free of far loop closures (the lowest feasible threshold has the most recall), or None."""
    scores = np.concatenate([t[:, 0] for t in tables.values()])
    thresholds = np.unique(scores[np.isfinite(scores) & (scores > 0)])
    if floor is not None:
        thresholds = np.unique(np.r_[floor, thresholds[thresholds > floor]])
    if lowest_threshold_only:
        thresholds = thresholds[:1]
    if not thresholds.size:
        return None
    feasible = np.ones(thresholds.size, bool)
    recall = np.full(thresholds.size, np.inf)
    for name, table in tables.items():
        right, wrong, far, found = _counts_at(table, thresholds)
        loops = right + wrong
        feasible &= (far == 0) & ((loops == 0) | (right >= precision * np.maximum(loops, 1) - 1e-9))
        if name in judged:
            recall = np.minimum(recall, found / max(int(_positive(table).sum()), 1))
    first = np.flatnonzero(feasible)
    return None if not first.size else (float(recall[first[0]]), float(thresholds[first[0]]))


def choose(runs: dict[str, dict[int, np.ndarray]], specs: dict[str, FoldSpec], precision: float,
           lowest_threshold_only: bool = False, floor: float | None = None) -> Choice | None:
    """The best setting on ``runs`` ({fold: {setting: verdicts}}), or None when no setting keeps every
    fold free of far loop closures and at ``precision``. ``lowest_threshold_only``: judge each setting at
    its lowest positive score only (a family where the threshold is not a free choice); ``floor``: the
    lowest threshold tried (None: the lowest score given)."""
    judged = [n for n in runs if specs[n].objective] or list(runs)
    best: tuple | None = None
    for i in next(iter(runs.values())):
        found = _judge_setting({n: r[i] for n, r in runs.items()}, judged, precision, lowest_threshold_only, floor)
        if found is not None and (best is None or (found[0], -i, found[1]) > best):
            best = (found[0], -i, found[1])
    return None if best is None else Choice(-best[1], best[2], best[0])


def leave_one_run_out(runs: dict[str, dict[int, np.ndarray]], specs: dict[str, FoldSpec], precision: float,
                      lowest_threshold_only: bool = False, floor: float | None = None) -> list[Fold]:
    """For each real run: the setting chosen on the folds that do not use it, and its figures on those that do."""
    sources = list(dict.fromkeys(s for n in runs for s in specs[n].sources))
    folds = []
    for held in sources:
        others = {n: r for n, r in runs.items() if held not in specs[n].sources}
        choice = choose(others, specs, precision, lowest_threshold_only, floor) if others else None
        figures = {n: run_figures(r[choice.setting], choice.threshold) for n, r in runs.items()
                   if held in specs[n].sources} if choice else {}
        folds.append(Fold(held, choice, figures))
    return folds
