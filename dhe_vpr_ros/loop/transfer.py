# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Choosing loop-closure settings that transfer to runs nobody tuned them on: leave one run out.

The input is a verdict table per run and candidate setting: an array (Q, 3) of each query frame's
sequence score (-inf where the verifier gave no answer), whether its place is right (within the
run's tolerance) and whether it is far (more than 5 frames off). No model or map is needed here, so
the selection is tested on small synthetic tables with known answers.

Choosing on a set of runs: keep the settings and thresholds under which every run has no far loop
closure and precision >= the target, then the highest worst-run recall over the runs the model
recognises (single-frame Recall@1 >= ``RECOGNISED``); ties go to the earlier setting (list settings
from the cheapest) and then the higher threshold.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Choice", "Fold", "RECOGNISED", "RunFigures", "choose", "leave_one_run_out", "run_figures"]

RECOGNISED = 0.85  # a run with a lower single-frame Recall@1 must stay quiet; its recall is no objective


@dataclass(frozen=True)
class RunFigures:
    """One run's loop closures at one threshold."""

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
    """A run held out: the choice made on the other runs and what it does on this one."""

    held_out: str
    choice: Choice | None
    figures: RunFigures | None


def run_figures(verdicts: np.ndarray, threshold: float) -> RunFigures:
    """Precision, recall, far and all loop closures of one run (``verdicts`` (Q, 3)) at ``threshold``."""
    accepted = verdicts[:, 0] >= threshold
    right = int((accepted & (verdicts[:, 1] > 0)).sum())
    wrong = int((accepted & (verdicts[:, 1] == 0)).sum())
    far = int((accepted & (verdicts[:, 2] > 0)).sum())
    return RunFigures(right / (right + wrong) if right + wrong else 1.0, right / len(verdicts), far, right + wrong)


def choose(runs: dict[str, dict[int, np.ndarray]], recalls: dict[str, float], precision: float,
           lowest_threshold_only: bool = False) -> Choice | None:
    """The best setting on ``runs`` ({run: {setting: verdicts}}), or None when no setting keeps every
    run free of far loop closures and at ``precision``. ``lowest_threshold_only``: judge each setting at
    its lowest positive score only (a family where the threshold is not a free choice)."""
    judged = [n for n in runs if recalls[n] >= RECOGNISED] or list(runs)
    best: tuple | None = None
    for i in next(iter(runs.values())):
        scores = np.concatenate([r[i][:, 0] for r in runs.values()])
        thresholds = np.unique(scores[np.isfinite(scores) & (scores > 0)])
        for t in thresholds[:1] if lowest_threshold_only else thresholds:
            results = {n: run_figures(r[i], float(t)) for n, r in runs.items()}
            if any(f.far or f.precision < precision for f in results.values()):
                continue
            key = (min(results[n].recall for n in judged), -i, float(t))
            if best is None or key > best:
                best = key
            break  # the lowest feasible threshold of a setting has the most recall
    return None if best is None else Choice(-best[1], best[2], best[0])


def leave_one_run_out(runs: dict[str, dict[int, np.ndarray]], recalls: dict[str, float], precision: float,
                      lowest_threshold_only: bool = False) -> list[Fold]:
    """For each run: the setting chosen on all the others, and its figures on the run held out."""
    folds = []
    for held in runs:
        choice = choose({n: r for n, r in runs.items() if n != held}, recalls, precision, lowest_threshold_only)
        figures = run_figures(runs[held][choice.setting], choice.threshold) if choice else None
        folds.append(Fold(held, choice, figures))
    return folds
