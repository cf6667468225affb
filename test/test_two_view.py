# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The two-view check of a loop closure and the map's keypoint layer (issue 32): real photos (the demo's),
frames it must refuse without raising, maps without the layer, appends, and the recogniser's use of it."""
import json
import logging

import cv2
import numpy as np
import pytest

from conftest import textured_image

from dhe_vpr_ros.commands.cli import main
from dhe_vpr_ros.commands.demo import DATA
from dhe_vpr_ros.loop.policy import LoopPolicy
from dhe_vpr_ros.loop.recognizer import PlaceRecognizer
from dhe_vpr_ros.loop.two_view import TwoViewCheck, place_inliers
from dhe_vpr_ros.map.database import MapDatabase
from dhe_vpr_ros.map.format import KEYPOINTS, MapError
from dhe_vpr_ros.map.keypoints import FEATURES, ROW_BYTES, Keypoints, decode_row, describe, encode_row
from dhe_vpr_ros.map.records import Place
from dhe_vpr_ros.method.identity import model_identity
from dhe_vpr_ros.method.localizer import Localizer
from dhe_vpr_ros.runtime.loading import load_model

CHECK = TwoViewCheck(min_inliers=20)
S = 1_000_000_000


def photo(folder: str, name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(DATA / folder / name)), cv2.COLOR_BGR2RGB)


# real second photographs of the demo (data/demo/SOURCES.md): another viewpoint, light or stereo camera
TRUE_PAIRS = [("03_aloeL.jpg", "03_aloeR.jpg"), ("04_basketball1.jpg", "04_basketball2.jpg"),
              ("05_rubberwhale1.jpg", "05_rubberwhale2.jpg"), ("06_Blender_Suzanne1.jpg", "06_Blender_Suzanne2.jpg"),
              ("00_graf1.jpg", "00_graf3.jpg"), ("01_leuvenA.jpg", "01_leuvenB.jpg")]


@pytest.mark.parametrize("place,query", TRUE_PAIRS)
def test_a_real_second_photograph_of_the_place_passes(place, query):
    assert CHECK.passes(CHECK.inliers(describe(photo("queries", query)), describe(photo("database", place))))


def test_photographs_of_different_places_fail():
    places = [describe(photo("database", p)) for p, _ in TRUE_PAIRS]
    queries = [describe(photo("queries", q)) for _, q in TRUE_PAIRS]
    for i, query in enumerate(queries):
        for j, place in enumerate(places):
            if i != j:
                assert not CHECK.passes(CHECK.inliers(query, place)), (TRUE_PAIRS[i][1], TRUE_PAIRS[j][0])


GRADIENT = np.repeat(np.linspace(0, 255, 640, dtype=np.float32)[None, :, None], 480, 0).repeat(3, 2).astype(np.uint8)


@pytest.mark.parametrize("frame", [np.full((480, 640, 3), 128, np.uint8), np.zeros((2, 3, 3), np.uint8), GRADIENT],
                         ids=["flat grey", "two pixels", "smooth gradient"])
def test_a_frame_without_corners_never_passes_and_never_raises(frame):
    found = describe(frame)
    assert len(found) < 8
    place = describe(photo("database", "03_aloeL.jpg"))
    for a, b in ((found, place), (place, found), (found, found)):
        assert CHECK.inliers(a, b) == 0


def test_a_frame_with_fewer_than_8_keypoints_never_passes():
    place = describe(photo("database", "03_aloeL.jpg"))
    few = Keypoints(place.points[:5], place.descriptors[:5], place.frame)  # 5 of the place's own keypoints
    assert CHECK.inliers(few, place) == 0 and CHECK.inliers(place, few) == 0


def test_the_same_picture_passes_under_any_minimum_but_zero_means_off():
    frame = describe(photo("database", "09_fruits.jpg"))
    assert CHECK.inliers(frame, frame) >= 200
    assert not TwoViewCheck(0).enabled and TwoViewCheck(1).enabled
    with pytest.raises(ValueError, match="verify_min_inliers"):
        TwoViewCheck(-1)


def test_keypoints_in_cells_the_map_does_not_let_vote_are_left_out():
    # two different places that share a burnt-in patch (a timestamp, a logo) in their bottom-left corner
    patch = textured_image(7, 96)
    a, b = textured_image(1, 384), textured_image(2, 384)
    a[-96:, :96], b[-96:, :96] = patch, patch
    ka, kb = describe(a), describe(b)
    assert CHECK.inliers(ka, kb) >= 20  # the patch alone would close the loop
    usable = np.ones((24, 24), bool)
    usable[-6:, :6] = False  # the patch's cells of the network's grid
    assert CHECK.inliers(ka, kb, usable.reshape(-1), (24, 24)) < 20


def test_a_keypoint_row_keeps_the_strongest_features_to_a_quarter_pixel():
    found = describe(photo("database", "13_box_in_scene.jpg"), features=800)
    row = encode_row(found)
    assert row.shape == (ROW_BYTES,) and ROW_BYTES <= 20 * 1024
    back = decode_row(row)
    assert len(back) == FEATURES and back.frame == found.frame
    assert np.abs(back.points - found.points[:FEATURES]).max() <= 0.125
    assert np.array_equal(back.descriptors, found.descriptors[:FEATURES])
    assert decode_row(encode_row(None)) is None
    bad = row.copy()
    bad[:2] = np.frombuffer(np.uint16(FEATURES + 1).tobytes(), np.uint8)
    with pytest.raises(ValueError, match="keypoints"):
        decode_row(bad)


# -- the map's layer ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return load_model(None)[0]


def photos(kind: str) -> list[np.ndarray]:
    return [photo(kind, p if kind == "database" else q) for p, q in TRUE_PAIRS]


def test_build_map_writes_the_layer_and_append_to_an_old_map_writes_it_for_new_places_only(tmp_path, model):
    old = MapDatabase(model_identity(model))
    loc = Localizer(model, old)
    local, global_ = loc.embed(photos("database")[:3])
    old.add(global_, local.half().numpy(), [Place(-1, f"old{i}") for i in range(3)])  # no frames: no layer
    old.save(tmp_path / "map")
    assert not (tmp_path / "map" / KEYPOINTS).exists()
    opened = MapDatabase.open(tmp_path / "map")
    assert not opened.has_keypoints and opened.keypoints(0) is None

    images = tmp_path / "more"
    images.mkdir()
    for i, image in enumerate(photos("database")[3:]):
        cv2.imwrite(str(images / f"{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert main(["build-map", "--images", str(images), "-o", str(tmp_path / "map"), "--append",
                 "--grids", "float16"]) == 0
    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    assert manifest["keypoints"]["first_place"] == 3 and manifest["version"] == 3
    assert (tmp_path / "map" / KEYPOINTS).stat().st_size == 3 * ROW_BYTES
    grown = MapDatabase.open(tmp_path / "map")
    assert grown.keypoints(2) is None and len(grown.keypoints(3)) > 100

    assert main(["build-map", "--images", str(images), "-o", str(tmp_path / "new")]) == 0
    assert (tmp_path / "new" / KEYPOINTS).stat().st_size == 3 * ROW_BYTES
    assert json.loads((tmp_path / "new" / "manifest.json").read_text())["keypoints"]["first_place"] == 0


@pytest.mark.parametrize("damage,words", [
    (lambda p: (p / KEYPOINTS).write_bytes(b"\0" * 10), "keypoints.orb has 10 bytes"),
    (lambda p: (p / KEYPOINTS).unlink(), "keypoints.orb has 0 bytes"),
])
def test_a_damaged_layer_is_one_clear_error(tmp_path, model, damage, words):
    db = MapDatabase(model_identity(model))
    Localizer(model, db).add_images(photos("database")[:2], [Place(-1, "a"), Place(-1, "b")])
    db.save(tmp_path / "map")
    damage(tmp_path / "map")
    with pytest.raises(MapError, match=words):
        MapDatabase.open(tmp_path / "map")


def recognizer_on(model, database, **policy):
    loc = Localizer(model, database, reranker="dhe", top_k=4)
    return PlaceRecognizer(loc, LoopPolicy(min_score=0, min_time_gap_sec=0, sequence_length=1,
                                           min_distinctiveness=1.0, **policy))


def map_of(model, with_frames: bool) -> MapDatabase:
    db = MapDatabase(model_identity(model))
    loc = Localizer(model, db)
    images = photos("database")
    places = [Place(-1, f"p{i}", 100 * S) for i in range(len(images))]
    if with_frames:
        loc.add_images(images, places)
    else:
        local, global_ = loc.embed(images)
        db.add(global_, local.half().numpy(), places)
    return db


def test_the_recogniser_refuses_a_place_the_check_does_not_confirm_and_counts_it(model):
    rec = recognizer_on(model, map_of(model, True), verify_min_inliers=20)
    out = rec.recognize(photo("queries", "05_rubberwhale2.jpg"), 500 * S)
    assert out.accepted and out.two_view_inliers >= 20 and out.loop_closure is not None
    rec.update(verify_min_inliers=100000)
    out = rec.recognize(photo("queries", "05_rubberwhale2.jpg"), 501 * S)
    assert not out.accepted and out.refused and out.loop_closure is None and rec.refused_by_two_view == 1
    rec.update(verify_min_inliers=0)  # off: not even computed
    out = rec.recognize(photo("queries", "05_rubberwhale2.jpg"), 502 * S)
    assert out.accepted and out.two_view_inliers is None


def test_a_map_without_the_layer_answers_and_skips_the_check_with_one_line(model, caplog):
    rec = recognizer_on(model, map_of(model, False), verify_min_inliers=100000)
    with caplog.at_level(logging.WARNING, logger="dhe_vpr_ros.loop.recognizer"):
        first = rec.recognize(photo("queries", "05_rubberwhale2.jpg"), 500 * S)
        second = rec.recognize(photo("queries", "04_basketball2.jpg"), 501 * S)
    assert first.accepted and second.accepted and first.two_view_inliers is None
    assert rec.unchecked == 2 and rec.refused_by_two_view == 0
    lines = [r for r in caplog.records if "no keypoints" in r.getMessage()]
    assert len(lines) == 1 and "rebuild the map" in lines[0].getMessage()


def test_keyframes_of_a_growing_map_carry_their_keypoints(model):
    db = MapDatabase(model_identity(model))
    rec = PlaceRecognizer(Localizer(model, db, top_k=4), LoopPolicy(add_keyframes=True, keyframe_min_interval_sec=0,
                                                                    min_time_gap_sec=0))
    for i, image in enumerate(photos("database")[:2]):
        assert rec.recognize(image, i * S).keyframe_id == i
    kp = describe(photos("database")[1])
    assert place_inliers(CHECK, db, 1, kp) >= 200 and place_inliers(CHECK, db, 0, kp) < 20
    assert isinstance(db.keypoints(0), Keypoints)
