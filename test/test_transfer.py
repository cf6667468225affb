# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Leave-one-run-out selection of loop-closure settings on small synthetic verdict tables whose
answers were worked out by hand (issue 25: the fold selection, known answer; issue 32: folds that
must stay silent, folds held out together with each run they use, thumbnail folds that bind precision
but not recall)."""
import numpy as np
import pytest

from dhe_vpr_ros.loop.transfer import Choice, FoldSpec, RunFigures, choose, leave_one_run_out, run_figures

R, W, F = (1, 0), (0, 0), (0, 1)  # right; wrong but near; wrong and far
NONE = -np.inf


def table(*frames):
    return np.array([(score, *kind) for score, kind in frames], dtype=np.float64)


RUNS = {  # two settings (0 is the cheaper) per run
    "a": {0: table((10, R), (8, R), (6, W), (4, R)), 1: table((10, R), (9, R), (8, R), (1, W))},
    "b": {0: table((9, R), (7, F), (5, R), (NONE, W)), 1: table((9, R), (8, R), (2, F), (NONE, W))},
    "c": {0: table((5, R), (3, R), (NONE, W), (NONE, W)), 1: table((7, W), (6, R), (5, R), (4, R))},
}
ALL_RECOGNISED = {n: FoldSpec((n,)) for n in "abc"}


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
    specs = {**ALL_RECOGNISED, "c": FoldSpec(("c",), objective=False)}
    assert choose({n: RUNS[n] for n in "ac"}, specs, 0.95) == Choice(1, 8.0, 0.75)


def test_a_family_without_a_free_threshold_may_find_nothing():
    assert choose({n: RUNS[n] for n in "ab"}, ALL_RECOGNISED, 0.95, lowest_threshold_only=True) is None


def test_each_run_is_judged_with_the_settings_chosen_on_the_others():
    folds = {f.held_out: f for f in leave_one_run_out(RUNS, ALL_RECOGNISED, 0.95)}
    assert folds["c"].choice == Choice(1, 8.0, 0.5) and folds["c"].figures["c"].loops == 0
    assert folds["b"].choice == Choice(0, 8.0, 0.0)
    assert folds["b"].figures == {"b": RunFigures(1.0, 0.25, 0, 1)}
    assert folds["a"].choice == Choice(0, 9.0, 0.0)
    assert folds["a"].figures["a"].recall == pytest.approx(0.25)


def test_a_looser_precision_target_admits_near_misses_but_never_a_far_loop_closure():
    assert choose({n: RUNS[n] for n in "ac"}, ALL_RECOGNISED, 0.7) == Choice(1, 1.0, 0.75)
    # on b every threshold below 8 lets a far loop closure through, whatever the precision target
    assert choose({n: RUNS[n] for n in "ab"}, ALL_RECOGNISED, 0.0) == Choice(1, 8.0, 0.5)


# every loop closure on a silent fold is false: "s" answers its frames with scores 3 and 7 (setting 0) or
# 3 and 9 (setting 1), so a setting is only safe there above its highest score
SILENT = {0: table((3, F), (7, F), (NONE, F)), 1: table((3, F), (9, F), (NONE, F))}


def test_a_fold_that_must_stay_silent_rules_out_every_threshold_it_answers_above():
    runs = {"a": RUNS["a"], "s": SILENT}
    specs = {"a": FoldSpec(("a",)), "s": FoldSpec(("s",), objective=False, silent=True)}
    # setting 0 is safe on "a" from 8 (recall 0.5) and on "s" above 7: 8 holds both; setting 1 on "a"
    # is safe from 8 up (recall 0.75) but "s" answers 9: only 10 is silent there, where "a" keeps 0.25
    assert choose(runs, specs, 0.95) == Choice(0, 8.0, 0.5)
    # without the silent fold, setting 1 would have won
    assert choose({"a": RUNS["a"]}, specs, 0.95) == Choice(1, 8.0, 0.75)
    assert run_figures(SILENT[1], 8.0) == RunFigures(precision=0.0, recall=0.0, far=1, loops=1)


def test_folds_that_must_stay_silent_alone_choose_nothing():
    specs = {"s": FoldSpec(("s",), objective=False, silent=True)}
    # thresholds are the scores the folds give: every one of them answers a frame of a silent fold
    assert choose({"s": SILENT}, specs, 0.95) is None
    # one revisit fold whose scores lie above them gives a threshold, and its recall is the objective
    above = {0: table((12, R), (11, R), (NONE, W)), 1: table((8, R), (NONE, W), (NONE, W))}
    specs["r"] = FoldSpec(("r",))
    assert choose({"s": SILENT, "r": above}, specs, 0.95) == Choice(0, 11.0, 2 / 3)


def test_a_fold_that_uses_two_runs_is_held_out_with_each_of_them():
    runs = {"a": RUNS["a"], "b": RUNS["b"], "b_on_a": SILENT}
    specs = {"a": FoldSpec(("a",)), "b": FoldSpec(("b",)), "b_on_a": FoldSpec(("b", "a"), objective=False,
                                                                              silent=True)}
    folds = {f.held_out: f for f in leave_one_run_out(runs, specs, 0.95)}
    assert set(folds["a"].figures) == {"a", "b_on_a"} and set(folds["b"].figures) == {"b", "b_on_a"}
    # held out "a": chosen on "b" alone (setting 1 at 8, as on_ab shows b needs 8): 9 answers on b_on_a
    assert folds["a"].choice == Choice(1, 8.0, 0.5)
    assert folds["a"].figures["b_on_a"] == RunFigures(0.0, 0.0, 1, 1)
    # held out "b": chosen on "a" alone, at setting 1 from 8
    assert folds["b"].choice == Choice(1, 8.0, 0.75)


def test_frames_without_a_true_place_count_against_precision_but_not_in_recall():
    # one drive: the first two frames are its first traverse (nothing to recognise), the last two revisit
    drive = np.array([(5, 0, 1, 0), (NONE, 0, 0, 0), (8, 1, 0, 1), (4, 1, 0, 1)], dtype=np.float64)
    assert run_figures(drive, 4.0) == RunFigures(precision=2 / 3, recall=1.0, far=1, loops=3)
    assert run_figures(drive, 6.0) == RunFigures(precision=1.0, recall=0.5, far=0, loops=1)
    assert choose({"d": {0: drive}}, {"d": FoldSpec(("d",))}, 0.95) == Choice(0, 8.0, 0.5)


def test_a_right_loop_closure_of_a_frame_without_a_true_place_counts_for_precision_not_recall():
    # a camera that stood still: a first-traverse frame closing on an older keyframe of the same view is right,
    # but recall is the share of the second traverse's frames that close
    drive = np.array([(9, 1, 0, 0), (9, 1, 0, 0), (9, 1, 0, 1), (NONE, 0, 0, 1)], dtype=np.float64)
    assert run_figures(drive, 5.0) == RunFigures(precision=1.0, recall=0.5, far=0, loops=3)
    assert choose({"d": {0: drive}}, {"d": FoldSpec(("d",))}, 0.95) == Choice(0, 9.0, 0.5)


def test_a_floor_is_the_threshold_where_every_score_above_it_is_safe():
    # every answer of this setting is right: without a floor the threshold is the lowest score given (8),
    # with a floor of 3 it is the floor, and a floor never admits a score below it
    safe = {0: table((10, R), (8, R), (NONE, W), (NONE, W))}
    specs = {"a": FoldSpec(("a",))}
    assert choose({"a": safe}, specs, 0.95) == Choice(0, 8.0, 0.5)
    assert choose({"a": safe}, specs, 0.95, floor=3.0) == Choice(0, 3.0, 0.5)
    assert choose({"a": {0: table((10, R), (2, F))}}, specs, 0.95, floor=3.0) == Choice(0, 3.0, 0.5)
