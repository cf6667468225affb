# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The node's policy without ROS: time-gap exclusion, score gating, keyframes, the frame buffer."""
import threading

import pytest

from conftest import textured_image

from dhe_vpr_ros.method.identity import model_identity
from dhe_vpr_ros.method.localizer import Localizer
from dhe_vpr_ros.map.database import MapDatabase
from dhe_vpr_ros.map.format import MapError
from dhe_vpr_ros.map.records import Place, Pose
from dhe_vpr_ros.loop.policy import LoopPolicy
from dhe_vpr_ros.loop.recognizer import PlaceRecognizer
from dhe_vpr_ros.runtime.frame_slots import FrameSlots
from dhe_vpr_ros.runtime.loading import load_model

S = 1_000_000_000  # ns per second


@pytest.fixture(scope="module")
def model():
    return load_model(None)[0]


def scene(seed):
    return textured_image(seed, 320)[:240].copy()


def recognizer(model, policy=LoopPolicy(), places=3):
    loc = Localizer(model, MapDatabase(model_identity(model)), reranker="ransac", top_k=4)
    loc.add_images([scene(80 + i) for i in range(places)],
                   [Place(-1, f"p{i}", (100 + 10 * i) * S, Pose("map", (float(i), 0.0, 0.0))) for i in range(places)])
    return PlaceRecognizer(loc, policy)


def test_a_revisit_closes_a_loop_with_pose_and_stamps(model):
    rec = recognizer(model, LoopPolicy(min_score=30, min_time_gap_sec=30, sequence_length=1))
    out = rec.recognize(scene(81), 500 * S)
    assert out.best.place_id == 1 and out.accepted
    assert out.loop_closure == (500.0, 110.0) and out.pose == Pose("map", (1.0, 0.0, 0.0))


def test_places_within_the_time_gap_are_not_candidates(model):
    rec = recognizer(model, LoopPolicy(min_score=30, min_time_gap_sec=30, sequence_length=1))
    out = rec.recognize(scene(81), 115 * S)  # place 1 (110 s) and place 2 (120 s) are too recent
    assert {c.place_id for c in out.result.candidates} == {0} if out.result.candidates else True
    assert not out.accepted and out.loop_closure is None and out.pose is None
    rec.update(min_time_gap_sec=0.0)
    assert rec.recognize(scene(81), 115 * S).best.place_id == 1


def test_min_score_gates_loop_and_pose_but_not_the_match(model):
    rec = recognizer(model, LoopPolicy(min_score=1e5, min_time_gap_sec=0, sequence_length=1))
    out = rec.recognize(scene(82), 500 * S)
    assert out.best.place_id == 2 and not out.accepted and out.loop_closure is None and out.pose is None


def test_keyframes_respect_interval_and_max_places(model):
    rec = recognizer(model, LoopPolicy(add_keyframes=True, keyframe_min_interval_sec=1.0, max_places=5,
                                       min_time_gap_sec=0))
    ids = [rec.recognize(scene(90 + i), int((200 + 0.4 * i) * S), "/cam").keyframe_id for i in range(7)]
    # stamps 200.0, 200.4, ..., 202.4: one keyframe per second until the map is full (at 202.4)
    assert ids == [3, None, None, 4, None, None, None] and len(rec) == 5 and rec.map_full
    assert rec.localizer.database.places[3].source == "/cam" and rec.keyframes_added == 2


def test_invalid_updates_change_nothing(model):
    rec = recognizer(model, LoopPolicy(min_score=20))
    for bad in ({"min_score": -0.5}, {"max_places": 0}, {"sequence_length": 0}, {"reranker": "magic"}, {"top_k": 0},
                {"min_time_gap_sec": float("nan")}):
        with pytest.raises(ValueError):
            rec.update(**bad)
    assert rec.policy.min_score == 20 and rec.localizer.default_reranker == "ransac" and rec.localizer.top_k == 4
    rec.update(reranker="magsac", top_k=2, min_score=5.0, refine_rounds=2)
    assert (rec.localizer.default_reranker, rec.localizer.top_k, rec.policy.min_score) == ("magsac", 2, 5.0)


def test_save_writes_the_grown_map_and_refuses_other_files(model, tmp_path):
    rec = recognizer(model)
    assert "saved 3 places" in rec.save(str(tmp_path / "map"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(MapError):
        rec.save(str(tmp_path / "file"))


def test_frame_slots_keep_the_newest_frame_per_source_and_count_drops():
    slots = FrameSlots()
    for n in range(3):
        slots.put(f"a{n}", "/a")
    slots.put("b0", "/b")
    assert (slots.received, slots.dropped) == (4, 2)
    first, second = slots.take(), slots.take()
    assert (first.msg, second.msg) == ("a2", "b0")  # the oldest waiting source first, its newest frame
    assert slots.take(timeout=0.05) is None
    result = []
    waiter = threading.Thread(target=lambda: result.append(slots.take()))
    waiter.start()
    slots.close()
    waiter.join(5)
    assert result == [None] and not waiter.is_alive()


def test_places_a_line_predicts_are_re_ranked_when_retrieval_missed_them(model):
    """A route of 6 places, top_k 1: the frames' own places are retrieved, and from the third frame
    on the line's predicted place joins the candidates (``sequence_guided``), with the similarity
    retrieval would have given it; an excluded or unknown place never does."""
    loc = Localizer(model, MapDatabase(model_identity(model)), reranker="ransac", top_k=1)
    loc.add_images([scene(90 + i) for i in range(6)], [Place(-1, f"p{i}", i * S) for i in range(6)])
    query = loc.embed([scene(93)])[1][0]
    sims, ids = loc.retrieve(query, 1)
    assert ids.tolist() == [3]
    sims2, ids2 = loc.retrieve(query, 1, include_ids=[5, 3, 99, -1], exclude_ids=[4])
    assert ids2.tolist() == [3, 5] and sims2[0] == pytest.approx(sims[0]) and sims2[1] < sims2[0]
    assert sims2[1] == pytest.approx(float(loc.database.similarities(query, [5])[0]))
    policy = LoopPolicy(min_score=10, min_time_gap_sec=0, sequence_length=3, sequence_tolerance=0,
                        sequence_max_speed=1.0, sequence_guided=1, min_distinctiveness=1.0)
    rec = PlaceRecognizer(loc, policy)
    candidates = [[c.place_id for c in rec.recognize(scene(90 + t), (100 + t) * S).result.candidates]
                  for t in range(3)]
    assert [c[0] for c in candidates] == [0, 1, 2]  # (after the first frame a line predicts where it stands)
    # the fourth frame is retrieved as place 5 (another scene); the line 0, 1, 2 puts the robot at 3
    assert [c.place_id for c in rec.recognize(scene(95), 103 * S).result.candidates] in ([5, 3], [3, 5])
    rec.update(sequence_guided=0)
    assert [c.place_id for c in rec.recognize(scene(95), 104 * S).result.candidates] == [5]
