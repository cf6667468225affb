# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Synthetic second views: the true homography is right, difficulty bands are honoured."""
import math

import cv2
import numpy as np
import pytest

from conftest import textured_image
from dhe_vpr_ros.training.views import LEVELS, ViewRecipe, change_light, overlap, reach, sample_motion, synthetic_view

SIZE = 384


def _tilt_deg(motion: np.ndarray) -> float:
    """Out-of-plane tilt of a camera motion, from its projective row: the affine part (zoom,
    rotation, shift) leaves the last row alone, which is (r31, r32, f - c (r31 + r32)) of the
    tilted plane's rotation r (focal f = SIZE, centre c), up to scale; sin(tilt) = |(r31, r32)|."""
    a, b, d = motion[2] / motion[2, 2]
    c = SIZE / 2
    k = SIZE / (d + c * (a + b))
    return math.degrees(math.asin(min(1.0, math.hypot(a * k, b * k))))


def test_the_true_homography_maps_query_pixels_onto_the_same_scene_point():
    photo = textured_image(3, 512)
    rng = np.random.default_rng(0)
    for band in LEVELS.values():
        view = synthetic_view(rng, photo, SIZE, band, light=False)
        steps = np.arange(40, 344, 24)
        grid = np.stack(np.meshgrid(steps, steps), -1).reshape(-1, 2).astype(np.float32)
        mapped = cv2.perspectiveTransform(grid[None], view.h_true)[0]
        inside = ((mapped > 2) & (mapped < SIZE - 3)).all(1)
        assert inside.sum() >= 20
        q = grid[inside].round().astype(int)
        p = mapped[inside].round().astype(int)
        diff = np.abs(view.query[q[:, 1], q[:, 0]].astype(int) - view.positive[p[:, 1], p[:, 0]].astype(int))
        assert np.median(diff) < 40, np.median(diff)  # the same texture, up to resampling
        shuffled = np.abs(view.query[q[:, 1], q[:, 0]].astype(int) - view.positive[p[::-1, 1], p[::-1, 0]].astype(int))
        assert np.median(diff) < np.median(shuffled)


def test_difficulty_bands_bound_the_camera_motion_and_keep_the_overlap():
    recipe = ViewRecipe()
    tilts = {}
    for name, band in LEVELS.items():
        rng = np.random.default_rng(1)
        motions = [sample_motion(rng, SIZE, band, recipe) for _ in range(40)]
        tilts[name] = [_tilt_deg(m) for m in motions]
        assert max(tilts[name]) <= band[1] * recipe.max_tilt_deg + 0.5
        assert min(tilts[name]) >= band[0] * recipe.max_tilt_deg - 0.5
        need = 1.0 - (1.0 - recipe.min_overlap) * band[1]
        shared = [overlap(m, SIZE) for m in motions]
        assert np.mean([s >= need - 1e-3 for s in shared]) >= 0.9, shared
        assert max(reach(m, SIZE) for m in motions) <= recipe.max_reach  # never a view of the horizon
    assert np.mean(tilts["easy"]) < np.mean(tilts["medium"]) < np.mean(tilts["hard"])


def test_views_are_deterministic_per_generator_seed():
    photo, other = textured_image(4, 400), textured_image(5, 300)
    a = synthetic_view(np.random.default_rng([1, 2, 3]), photo, SIZE, (0, 1), other)
    b = synthetic_view(np.random.default_rng([1, 2, 3]), photo, SIZE, (0, 1), other)
    assert np.array_equal(a.query, b.query) and np.allclose(a.h_true, b.h_true)


@pytest.mark.parametrize("strength", [0.0, 1.0])
def test_light_changes_grow_with_strength(strength):
    image = textured_image(6, 256)
    changed = change_light(np.random.default_rng(2), image, strength)
    assert changed.shape == image.shape and changed.dtype == np.uint8
    if strength == 0.0:
        assert np.abs(changed.astype(int) - image).mean() < 2.0
    else:  # at full strength some of the 20 draws reach dusk
        darkest = min(change_light(np.random.default_rng(s), image, 1.0).mean() for s in range(20))
        assert darkest < 0.5 * image.mean()
