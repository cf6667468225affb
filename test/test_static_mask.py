# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""What the camera always sees must not vote: the static-cell mask learned from a map, the user's
mask, and matching that leaves masked cells out. Real backbone, real maps on disk."""
import json
import logging

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import textured_image

from dhe_vpr_ros.commands.cli import main
from dhe_vpr_ros.method.identity import model_identity
from dhe_vpr_ros.method.localizer import Localizer
from dhe_vpr_ros.map.database import MapDatabase
from dhe_vpr_ros.map.records import Place
from dhe_vpr_ros.method.matching import mutual_nearest_neighbours
from dhe_vpr_ros.loop.policy import LoopPolicy
from dhe_vpr_ros.loop.recognizer import PlaceRecognizer
from dhe_vpr_ros.runtime.loading import load_model
from dhe_vpr_ros.map.static_mask import MIN_PLACES, CellMask, CellStatistics, MaskSettings, user_mask
from dhe_vpr_ros.training.synthetic import camera_overlay

W, H = 320, 240


@pytest.fixture(scope="module")
def model():
    return load_model(None)[0]


def frames(n, overlay, first=400):
    return [camera_overlay(textured_image(first + i, W)[:H].copy()) if overlay else textured_image(first + i, W)[:H]
            for i in range(n)]


def overlay_cells(grid=24) -> np.ndarray:
    """(grid, grid) cells at least half covered by the overlay: where it differs from the frame itself."""
    white, black = np.full((H, W, 3), 255, np.uint8), np.zeros((H, W, 3), np.uint8)
    changed = (camera_overlay(white) != white).any(-1) | (camera_overlay(black) != black).any(-1)
    square = cv2.resize(changed.astype(np.float32), (384, 384), interpolation=cv2.INTER_AREA)
    return cv2.resize(square, (grid, grid), interpolation=cv2.INTER_AREA) >= 0.5


def build(model, images, path=None):
    loc = Localizer(model, MapDatabase(model_identity(model)), reranker="none")
    loc.add_images(images, [Place(-1, f"p{i}", (1000 + i) * 10**9) for i in range(len(images))])
    if path is not None:
        loc.database.save(path)
    return loc


def test_the_learned_mask_finds_a_constant_overlay_and_nothing_without_one(model):
    plain = build(model, frames(MIN_PLACES + 4, overlay=False)).database.mask
    assert plain.static is not None and plain.static.sum() == 0 and plain.all_usable
    learned = build(model, frames(MIN_PLACES + 4, overlay=True)).database.mask.static
    truth = overlay_cells()
    iou = (learned & truth).sum() / (learned | truth).sum()
    assert iou >= 0.8, (iou, learned.sum(), truth.sum())
    few = build(model, frames(MIN_PLACES - 1, overlay=True)).database.mask
    assert few.static is None and few.all_usable and "not learned" in few.summary()


def test_masked_cells_make_no_correspondences_and_change_no_unmasked_match():
    g = torch.Generator().manual_seed(3)
    query = F.normalize(torch.randn(16, 8, 8, generator=g), dim=0)
    noise = 0.3 * torch.randn(5, 16, 8, 8, generator=g)
    candidates = F.normalize(query[None] + noise, dim=1)
    usable = torch.ones(64, dtype=torch.bool)
    usable[torch.randperm(64, generator=g)[:20]] = False
    free, masked = mutual_nearest_neighbours(query, candidates), mutual_nearest_neighbours(query, candidates, usable)
    assert not masked.valid[:, ~usable].any()  # a masked query cell matches nothing
    assert usable[masked.partner[masked.valid]].all()  # and no usable cell matches a masked one
    kept = free.valid & usable[None, :] & usable[free.partner]  # mutual pairs of usable cells without the mask
    assert kept.any() and masked.valid[kept].all() and (masked.partner[kept] == free.partner[kept]).all()


def test_the_mask_survives_save_open_append_and_keyframes_and_an_old_map_opens(model, tmp_path):
    images = frames(MIN_PLACES + 2, overlay=True)
    loc = build(model, images, tmp_path / "map")
    learned = loc.database.mask.static.copy()
    opened = MapDatabase.open(tmp_path / "map")
    assert opened.cells.count == len(images) and np.array_equal(opened.mask.static, learned)
    assert cv2.imread(str(tmp_path / "map" / "static_mask.png")).shape == (384, 384, 3)
    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    assert len(manifest["mask"]["static_cells"]) == int(learned.sum())
    # append, and grow the map with keyframes as the node does: the statistics follow
    more = frames(3, overlay=True, first=700)
    Localizer(model, opened, reranker="none").add_images(more[:1], [Place(-1, "appended")])
    opened.save(tmp_path / "map")
    rec = PlaceRecognizer(Localizer(model, MapDatabase.open(tmp_path / "map"), reranker="ransac", top_k=4),
                          LoopPolicy(add_keyframes=True, keyframe_min_interval_sec=0.0, min_time_gap_sec=0))
    for i, image in enumerate(more[1:]):
        rec.recognize(image, (5000 + i) * 10**9, "/cam")
    grown = rec.localizer.database
    assert grown.cells.count == len(images) + 3 and grown.mask.static.sum() >= learned.sum() - 2
    # an older map: no cell sums, no mask field, no file fingerprints; it opens and learns the same mask from
    # its grids
    saved = MapDatabase.open(tmp_path / "map").cells.sums.copy()
    (tmp_path / "map" / "cells.f64").unlink()
    (tmp_path / "map" / "static_mask.png").unlink()
    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    del manifest["mask"], manifest["files"]
    (tmp_path / "map" / "manifest.json").write_text(json.dumps(manifest))
    old = MapDatabase.open(tmp_path / "map")
    assert old.cells.count == len(images) + 1 and np.allclose(old.cells.sums, saved)
    assert np.array_equal(old.mask.static, MapDatabase.open(tmp_path / "map").mask.static)


def test_matching_on_a_map_with_an_overlay_ignores_it(model):
    """Queries of places that are NOT in the map: with the overlay voting, every one scores high."""
    loc = build(model, frames(MIN_PLACES + 4, overlay=True))
    unmasked = build(model, frames(MIN_PLACES + 4, overlay=True))
    unmasked.database.set_mask_settings(MaskSettings(threshold=1.0))
    strangers = frames(3, overlay=True, first=900)
    masked_scores = [loc.query(img, reranker="ransac", top_k=4).best.score for img in strangers]
    unmasked_scores = [unmasked.query(img, reranker="ransac", top_k=4).best.score for img in strangers]
    assert max(masked_scores) < min(unmasked_scores) / 2, (masked_scores, unmasked_scores)


def test_user_mask_and_roi(tmp_path):
    hood = np.full((H, W), 255, np.uint8)
    hood[H * 4 // 5:] = 0
    cv2.imwrite(str(tmp_path / "hood.png"), hood)
    usable = user_mask((24, 24), str(tmp_path / "hood.png"), frame_size=(W, H))
    assert usable[:19].all() and not usable[20:].any()
    roi = user_mask((24, 24), None, (0.25, 0.0, 0.0, 0.0))
    assert not roi[:, :6].any() and roi[:, 6:].all()
    assert user_mask((24, 24)) is None
    stats = CellStatistics.empty((4, 24, 24))
    mask = CellMask.derive(stats, MaskSettings(user_usable=usable))
    assert mask.static is None and np.array_equal(mask.usable, usable) and "masked by the user" in mask.summary()


def test_bad_mask_inputs_end_in_one_line_and_leave_the_map_untouched(tmp_path, caplog):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, image in enumerate(frames(3, overlay=False)):
        cv2.imwrite(str(photos / f"{i:02d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert main(["build-map", "--images", str(photos), "-o", str(tmp_path / "map")]) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "map").iterdir()}
    black = tmp_path / "black.png"
    cv2.imwrite(str(black), np.zeros((H, W), np.uint8))
    tall = tmp_path / "tall.png"
    cv2.imwrite(str(tall), np.full((W, H), 255, np.uint8))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    cases = [(["--mask", str(tmp_path / "missing.png")], "cannot read the mask"),
             (["--mask", str(tmp_path / "broken.png")], "cannot read the mask"),
             (["--mask", str(black)], "leave no cell"),
             (["--mask", str(tall)], "camera's resolution"),
             (["--roi", "0.6", "0.6", "0", "0"], "ROI margins")]
    for extra, reason in cases:
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            code = main(["build-map", "--images", str(photos), "-o", str(tmp_path / "map"), "--append", *extra])
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert code == 2 and len(errors) == 1 and reason in errors[0], (extra, errors)
        assert {p.name: p.read_bytes() for p in (tmp_path / "map").iterdir()} == before


def test_a_map_grown_while_the_camera_stood_still_still_matches_and_says_why(model, caplog):
    """A robot that starts by standing still fills its online map with the same view: every cell looks
    static, and applying that mask would make every score 0. Matching then ignores the learned part
    (build-map refuses such a map instead: test_bad_files), and says so once."""
    still = textured_image(900, W)[:H]
    db = MapDatabase(model_identity(model))
    rec = PlaceRecognizer(Localizer(model, db, reranker="ransac", top_k=4),
                          LoopPolicy(add_keyframes=True, keyframe_min_interval_sec=0, min_time_gap_sec=0,
                                     min_score=0, sequence_length=1, min_distinctiveness=1.0))
    for i in range(MIN_PLACES + 2):
        rec.recognize(still, i * 1_000_000_000)
    assert db.mask.static is not None and db.mask.static.all()
    with caplog.at_level(logging.WARNING, logger="dhe_vpr_ros.map.database"):
        outs = [rec.recognize(still, (100 + i) * 1_000_000_000) for i in range(2)]
    assert all(out.best.score > 40 for out in outs)
    assert len([r for r in caplog.records if "stood still" in r.getMessage()]) == 1
