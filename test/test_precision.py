# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Precision figures on hand-made rankings whose curve is known, and the sequence verifier on
synthetic streams of matches (no network, no DDS)."""
import math

import numpy as np
import pytest

from dhe_vpr_ros.loop.precision import precision_curve, summarize
from dhe_vpr_ros.loop.policy import LoopPolicy, pose_variance_scale
from dhe_vpr_ros.loop.sequence import SequenceSettings, SequenceVerifier, Verdict


def test_curve_with_ties_a_query_without_a_true_place_and_an_unanswered_one():
    # first-place scores, whether right, whether the map holds the query's place at all
    scores = [10, 9, 9, 8, 7, 5, math.nan]
    correct = [True, True, False, True, False, True, False]
    has_positive = [True, True, True, True, False, True, True]  # query 4 has no true place; 6 has no answer
    curve = precision_curve(scores, correct, has_positive)
    assert curve.positives == 6
    assert list(curve.thresholds) == [10, 9, 8, 7, 5]  # the tie at 9 is one step
    assert curve.precision == pytest.approx([1, 2 / 3, 3 / 4, 3 / 5, 4 / 6])
    assert curve.recall == pytest.approx([1 / 6, 2 / 6, 3 / 6, 3 / 6, 4 / 6])
    figures = summarize(curve, min_score=8)
    assert figures.recall_at_100_precision == pytest.approx(1 / 6)  # the tie at 9 holds a wrong answer
    assert figures.threshold_at_100_precision == 10
    assert figures.average_precision == pytest.approx((1 + 2 / 3 + 3 / 4 + 4 / 6) / 6)
    assert figures.wrong_above_min_score == 1  # the wrong 9; the wrong 7 is below 8
    assert summarize(curve, min_score=0).wrong_above_min_score == 2
    assert (figures.queries, figures.positives) == (7, 6)


def test_a_wrong_best_answer_means_no_recall_at_full_precision():
    figures = summarize(precision_curve([5, 4, 3], [False, True, True], [True, True, True]))
    assert figures.recall_at_100_precision == 0 and figures.threshold_at_100_precision is None
    assert figures.average_precision == pytest.approx((1 / 2 + 2 / 3) / 3)
    perfect = summarize(precision_curve([5, 4, 3], [True, True, True], [True, True, True]))
    assert perfect.recall_at_100_precision == 1 and perfect.threshold_at_100_precision == 3
    assert perfect.average_precision == pytest.approx(1)


def test_inconsistent_inputs_are_refused():
    with pytest.raises(ValueError):
        precision_curve([1, 2], [True], [True, True])
    with pytest.raises(ValueError):  # right without a true place in the map
        precision_curve([1], [True], [False])


def stream(length, track=100, speed=1.0, score=50.0, others=((400, 10.0), (700, 12.0))):
    """Frames whose best place advances along the map, with unrelated weaker candidates."""
    for t in range(length):
        ids = [int(round(track + speed * t))] + [p + 3 * t for p, _ in others]
        yield ids, [score] + [s for _, s in others]


def verify(frames, settings, min_score):
    verifier = SequenceVerifier(settings)
    verdicts = [verifier.observe(ids, scores) for ids, scores in frames]
    return verdicts, [v.passes(settings, min_score) for v in verdicts]


def test_a_consistent_run_passes_once_the_window_has_filled():
    settings = SequenceSettings(length=5, tolerance=1, max_speed=2.0)
    verdicts, passed = verify(stream(8), settings, min_score=45)
    # the sequence score is the window's mean: 50 * frames seen / 5 until the window is full
    assert [round(v.score) for v in verdicts[:5]] == [10, 20, 30, 40, 50]
    assert passed == [False] * 4 + [True] * 4
    assert all(v.place_id == 100 + t for t, v in enumerate(verdicts))
    assert verdicts[-1].speed == pytest.approx(1.0) and verdicts[-1].agreeing == 5


def test_a_robot_standing_still_agrees_with_itself():
    verdicts, passed = verify(stream(6, speed=0.0), SequenceSettings(length=5), min_score=45)
    assert passed[-1] and verdicts[-1].place_id == 100 and verdicts[-1].speed == 0.0


def test_a_one_frame_jump_to_a_far_place_never_passes():
    settings = SequenceSettings(length=5)
    frames = list(stream(6))
    frames.append(([900, 106, 400], [80.0, 30.0, 10.0]))  # a strong look-alike far away; the truth ranks second
    frames.append(([905], [90.0]))  # and once more, without the truth at all
    verdicts, passed = verify(frames, settings, min_score=45)
    assert passed == [False] * 4 + [True] * 2 + [False] * 2
    # the frame's own first place is the hypothesis: one frame of evidence, and the true line beside it is
    # a stronger rival (distinctiveness below 1)
    assert verdicts[6].place_id == 900 and verdicts[6].score == 16 and verdicts[6].distinctiveness < 1
    assert verdicts[7].place_id == 905 and verdicts[7].agreeing == 1
    # two agreeing frames needed: a one-frame jump cannot pass whatever its score, a consistent run passes early
    strict = SequenceSettings(length=5, min_agreeing=2)
    assert verify(frames, strict, min_score=10)[1] == [False] + [True] * 5 + [False] * 2
    single, single_passed = verify(frames, SequenceSettings(length=1), min_score=40)
    assert single[6].place_id == 900 and single_passed[6]  # what a single-frame gate would have published


def test_an_aliased_place_does_not_pass_the_distinctiveness_ratio():
    frames = [([100 + t, 300 + t], [50.0, 50.0]) for t in range(6)]  # two places that always look the same
    verdicts, passed = verify(frames, SequenceSettings(length=5, min_distinctiveness=1.2), min_score=40)
    assert verdicts[-1].distinctiveness == pytest.approx(1.0) and not any(passed)
    # a neighbour within the neighbourhood is no rival: a corridor's next frame looks alike by construction
    corridor = [([100 + t, 101 + t], [50.0, 49.0]) for t in range(6)]
    verdicts, passed = verify(corridor, SequenceSettings(length=5, min_distinctiveness=1.2), min_score=40)
    assert passed[-1] and verdicts[-1].distinctiveness == math.inf


def test_settings_change_live_and_keep_the_history():
    verifier = SequenceVerifier(SequenceSettings(length=5))
    frames = list(stream(3))
    for ids, scores in frames:
        verdict = verifier.observe(ids, scores)
    assert not verdict.passes(verifier.settings, 45)  # 3 of 5 frames: 30
    verifier.configure(SequenceSettings(length=3))
    verdict = verifier.observe([103, 409, 709], [50.0, 10.0, 12.0])  # the 4th frame of the run
    assert verdict.passes(verifier.settings, 45) and verdict.score == pytest.approx(50)
    verifier.reset()
    assert verifier.observe([104], [50.0]).score == pytest.approx(50 / 3)


@pytest.mark.parametrize("bad", [{"length": 0}, {"length": 2.5}, {"tolerance": -1}, {"max_speed": math.nan},
                                 {"min_distinctiveness": 0.5}, {"min_agreeing": 101}, {"neighbourhood": True}])
def test_bad_settings_name_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SequenceSettings(**{"length": 5, **bad})


def test_the_policy_names_its_own_fields_and_resolves_the_calibrated_threshold():
    with pytest.raises(ValueError, match="sequence_length"):
        LoopPolicy(sequence_length=0)
    with pytest.raises(ValueError, match="min_score"):
        LoopPolicy(min_score=-0.5)
    auto = LoopPolicy()
    assert auto.threshold("dhe") != auto.threshold("none")  # scores live on different scales
    assert LoopPolicy(min_score=7.0).threshold("dhe") == 7.0


def test_pose_variance_grows_as_the_evidence_weakens():
    def scale(score, agreeing):
        return pose_variance_scale(Verdict(1, 0, score, agreeing, 1.0, math.inf, 5), threshold=50, length=5)
    assert scale(100, 5) == scale(300, 5) == 1.0  # twice the threshold or more, every frame agreeing
    assert scale(50, 5) == pytest.approx(4.0) and scale(70, 5) < scale(50, 5)
    assert scale(100, 1) == pytest.approx(5.0) and scale(100, 1) > scale(100, 3) > scale(100, 5)
    assert np.isfinite(scale(0.0, 0))


def test_lines_predict_the_next_place_and_bridge_a_frame_retrieval_missed():
    """Guided candidates (issue 25): a frame whose retrieval dropped the true place still has it
    re-ranked when the strongest line predicts it, so the line keeps its real support and the frame
    is verified; without the prediction it is not. A one-frame jump far away never passes."""
    settings = SequenceSettings(length=3, tolerance=1, max_speed=2.0, min_agreeing=2, min_distinctiveness=1.5)
    truth = {t: 100 + 2 * t for t in range(8)}  # the robot moves 2 places per frame
    distractors = lambda t: ([400 + 5 * t, 700 - 3 * t], [30.0, 25.0])  # noqa: E731

    def frame(t, missed=False, guided=()):
        ids, scores = distractors(t)
        if not missed or truth[t] in guided:  # the predicted place is re-ranked: it gets its true score
            ids, scores = [truth[t], *ids], [120.0, *scores]
        return ids, scores

    for guide in (False, True):
        verifier = SequenceVerifier(settings)
        passed, predicted = [], []
        for t in range(8):
            guided = verifier.predict(2) if guide else []
            predicted.append(guided)
            verdict = verifier.observe(*frame(t, missed=t == 5, guided=guided))
            passed.append(verdict.passes(settings, 90.0) and verdict.place_id == truth[t])
        if guide:
            assert predicted[5][0] == truth[5]  # the strongest line's next place
            assert passed == [False, False, True, True, True, True, True, True]
        else:  # frame 5 lost its place, and the two frames after it lack a third of their support
            assert passed == [False, False, True, True, True, False, False, False]
    verifier = SequenceVerifier(settings)
    for t in range(5):
        verifier.observe(*frame(t))
    jump = verifier.observe([900, *distractors(5)[0]], [200.0, *distractors(5)[1]])  # a look-alike far away
    assert jump.place_id == 900 and not jump.passes(settings, 90.0)
    assert verifier.predict(0) == [] and SequenceVerifier(settings).predict(3) == []
