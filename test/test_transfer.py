# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Leave-one-run-out selection of loop-closure settings on small synthetic verdict tables whose
answers were worked out by hand (issue 25: the fold selection, known answer)."""
import numpy as np
import pytest

from dhe_vpr_ros.loop.transfer import Choice, RunFigures, choose, leave_one_run_out, run_figures

R, W, F = (1, 0), (0, 0), (0, 1)  # right; wrong but near; wrong and far
NONE = -np.inf


def table(*frames):
    return np.array([(score, *kind) for score, kind in frames], dtype=np.float64)


RUNS = {  # two settings (0 is the cheaper) per run
    "a": {0: table((10, R), (8, R), (6, W), (4, R)), 1: table((10, R), (9, R), (8, R), (1, W))},
    "b": {0: table((9, R), (7, F), (5, R), (NONE, W)), 1: table((9, R), (8, R), (2, F), (NONE, W))},
    "c": {0: table((5, R), (3, R), (NONE, W), (NONE, W)), 1: table((7, W), (6, R), (5, R), (4, R))},
}
ALL_RECOGNISED = {"a": 1.0, "b": 1.0, "c": 1.0}


def test_run_figures_count_right_wrong_and_far_above_the_threshold():
    assert run_figures(RUNS["b"][0], 7.0) == RunFigures(precision=0.5, recall=0.25, far=1, loops=2)
    assert run_figures(RUNS["c"][0], 100.0) == RunFigures(precision=1.0, recall=0.0, far=0, loops=0)


def test_choice_is_the_best_worst_recall_without_far_or_imprecise_runs():
    on_ab = {n: RUNS[n] for n in "ab"}
    # setting 0 is only safe from 8 up (worst recall 0.25); setting 1 at 8 keeps 0.5 on b
    assert choose(on_ab, ALL_RECOGNISED, 0.95) == Choice(setting=1, threshold=8.0, worst_recall=0.5)
    # c recalls nothing at 8 under either setting: the tie goes to the cheaper setting
    assert choose({n: RUNS[n] for n in "ac"}, ALL_RECOGNISED, 0.95) == Choice(0, 8.0, 0.0)


def test_a_run_the_model_does_not_recognise_must_be_quiet_but_is_no_objective():
    recalls = {**ALL_RECOGNISED, "c": 0.5}
    assert choose({n: RUNS[n] for n in "ac"}, recalls, 0.95) == Choice(1, 8.0, 0.75)


def test_a_family_without_a_free_threshold_may_find_nothing():
    assert choose({n: RUNS[n] for n in "ab"}, ALL_RECOGNISED, 0.95, lowest_threshold_only=True) is None


def test_each_run_is_judged_with_the_settings_chosen_on_the_others():
    folds = {f.held_out: f for f in leave_one_run_out(RUNS, ALL_RECOGNISED, 0.95)}
    assert folds["c"].choice == Choice(1, 8.0, 0.5) and folds["c"].figures.loops == 0
    assert folds["b"].choice == Choice(0, 8.0, 0.0)
    assert folds["b"].figures == RunFigures(1.0, 0.25, 0, 1)
    assert folds["a"].choice == Choice(0, 9.0, 0.0)
    assert folds["a"].figures.recall == pytest.approx(0.25)


def test_a_looser_precision_target_admits_near_misses_but_never_a_far_loop_closure():
    assert choose({n: RUNS[n] for n in "ac"}, ALL_RECOGNISED, 0.7) == Choice(1, 1.0, 0.75)
    # on b every threshold below 8 lets a far loop closure through, whatever the precision target
    assert choose({n: RUNS[n] for n in "ab"}, ALL_RECOGNISED, 0.0) == Choice(1, 8.0, 0.5)
