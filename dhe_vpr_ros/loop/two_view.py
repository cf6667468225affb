# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""A second opinion before a loop closure is published: classical two-view geometry.

DHE proposes and ranks; this check decides. The frame and the one place about to be published are
matched with ORB descriptors (the place's come from the map's keypoint layer, ``map.keypoints``):
nearest neighbours that pass Lowe's ratio test, one match per map keypoint, then a fundamental
matrix by RANSAC. The count of matches consistent with it is geometry in pixels, so one minimum
(``min_inliers``; RTAB-Map ships 20, VINS-Mono 25) means about the same in every environment, which
a learned score does not. Keypoints in grid cells the map does not let vote (a lens ring, a hood, a
burnt-in timestamp: the static-cell mask) are left out, as they match in every pair.

The check never raises: a frame with fewer than 8 usable keypoints or matches, or a degenerate
RANSAC, has 0 inliers. RANSAC is seeded, so the same pair always gives the same count (``evaluate``,
``calibrate`` and the node agree).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..map.keypoints import Keypoints

__all__ = ["MIN_MATCHES", "PairInliers", "TwoViewCheck", "place_inliers"]

MIN_MATCHES = 8  # the fundamental matrix needs 8 correspondences
SEED = 12345


@dataclass(frozen=True)
class TwoViewCheck:
    """``min_inliers``: matches consistent with one fundamental matrix a loop closure needs (0: the
    check is off); ``ratio``: Lowe's ratio test; ``threshold_px``: RANSAC's distance to the epipolar
    line, in pixels of the detection frames (320 .. 1280 px wide)."""

    min_inliers: int = 0
    ratio: float = 0.8
    threshold_px: float = 2.0

    def __post_init__(self):
        if not 0 <= self.min_inliers <= 100000:
            raise ValueError(f"verify_min_inliers must be from 0 (off) to 100000, not {self.min_inliers}")

    @property
    def enabled(self) -> bool:
        return self.min_inliers > 0

    def passes(self, inliers: int) -> bool:
        return inliers >= self.min_inliers

    def inliers(self, frame: Keypoints, place: Keypoints, usable: np.ndarray | None = None,
                grid: tuple[int, int] | None = None) -> int:
        """Matches of ``frame`` and ``place`` consistent with one fundamental matrix. ``usable``:
        (rows * cols,) bool cells of the network's ``grid`` whose keypoints may take part."""
        frame, place = _usable(frame, usable, grid), _usable(place, usable, grid)
        if len(frame) < MIN_MATCHES or len(place) < MIN_MATCHES:
            return 0
        matches = self._matches(frame.descriptors, place.descriptors)
        if len(matches) < MIN_MATCHES:
            return 0
        a, b = frame.points[matches[:, 0]], place.points[matches[:, 1]]
        cv2.setRNGSeed(SEED)
        try:
            fundamental, mask = cv2.findFundamentalMat(a, b, cv2.FM_RANSAC, self.threshold_px, 0.999, 2000)
        except cv2.error:  # degenerate input
            return 0
        if fundamental is None or mask is None:
            return 0
        return int(np.count_nonzero(mask))

    def _matches(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(M, 2) indices (frame, place) of ratio-test matches, at most one per place keypoint (the closest)."""
        pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(a, b, k=2)
        good = [(m[0].queryIdx, m[0].trainIdx, m[0].distance) for m in pairs
                if len(m) == 2 and m[0].distance < self.ratio * m[1].distance]
        if not good:
            return np.zeros((0, 2), np.int64)
        found = np.array(good, dtype=np.float64)
        found = found[np.lexsort((found[:, 2], found[:, 1]))]  # by place keypoint, closest first
        first = np.r_[True, found[1:, 1] != found[:-1, 1]]
        return found[first, :2].astype(np.int64)


def _usable(keypoints: Keypoints, usable: np.ndarray | None, grid: tuple[int, int] | None) -> Keypoints:
    if usable is None or grid is None or not len(keypoints):
        return keypoints
    keep = np.asarray(usable, bool).reshape(-1)[keypoints.cells(grid)]
    return Keypoints(keypoints.points[keep], keypoints.descriptors[keep], keypoints.frame)


def place_inliers(check: TwoViewCheck, database, place_id: int, frame: Keypoints) -> int | None:
    """Inliers of ``frame`` and map place ``place_id`` (``map.MapDatabase``: its keypoints and its mask);
    None where the map holds no keypoints for the place (built before the layer existed)."""
    place = database.keypoints(place_id)
    if place is None:
        return None
    return check.inliers(frame, place, database.usable_cells(), tuple(database.identity.local_shape[1:]))


class PairInliers:
    """The inliers of (query frame, map place) pairs of a recorded run, each pair computed once:
    what ``evaluate --sequence`` and ``calibrate`` look up for the places the verification accepts."""

    def __init__(self, database, frames: list[Keypoints], check: TwoViewCheck = TwoViewCheck()):
        self.database, self.frames, self.check = database, frames, check
        self._known: dict[tuple[int, int], int | None] = {}

    def __call__(self, query: int, place_id: int) -> int | None:
        key = (int(query), int(place_id))
        if key not in self._known:
            self._known[key] = place_inliers(self.check, self.database, place_id, self.frames[query])
        return self._known[key]
