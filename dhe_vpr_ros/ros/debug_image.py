# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""A picture of one match: query beside the map image, inlier lines, homography outline.

Used for the node's ~/debug_image and the demo's PNG. The map stores features, not pixels;
the map image is read from the place's source file when it exists, else a grey panel stands
in for it (online keyframes, bag topics).
"""
from __future__ import annotations

import os

import cv2
import numpy as np

from ..image_conversion import ImageConversionError, decode_file

__all__ = ["draw_match", "map_image"]


def _panel_height(images, height):
    return [cv2.resize(img, (max(1, round(img.shape[1] * height / img.shape[0])), height)) for img in images]


def map_image(candidate, fallback_size=(384, 384)) -> np.ndarray:
    """The map place's own image when its source file is at hand, else a grey panel naming it."""
    source = candidate.place.source
    if source and os.path.isfile(source):
        try:
            image = decode_file(source, cv2.IMREAD_COLOR)
        except (OSError, ImageConversionError):
            image = None
        if image is not None:
            return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    w, h = candidate.place.image_size or fallback_size
    panel = np.full((h, w, 3), 90, np.uint8)
    cv2.putText(panel, f"place {candidate.place_id}", (10, h // 2), cv2.FONT_HERSHEY_SIMPLEX, 1.0,
                (255, 255, 255), 2)
    return panel


def draw_match(query: np.ndarray, candidate, inliers: np.ndarray, height: int = 240,
               label: str | None = None, colour=(0, 220, 0)) -> np.ndarray:
    """RGB picture: query | map image; lines between inlier matches; the query's border
    mapped into the map image by the homography (the estimated overlap)."""
    target = map_image(candidate)
    sq, st = height / query.shape[0], height / target.shape[0]
    left, right = _panel_height([query, target], height)
    canvas = np.concatenate([left, right], axis=1).copy()
    offset = left.shape[1]
    for (qx, qy), (mx, my) in inliers[:200]:
        cv2.line(canvas, (int(qx * sq), int(qy * sq)), (int(mx * st) + offset, int(my * st)), (255, 200, 0), 1,
                 cv2.LINE_AA)
    h, w = query.shape[:2]
    corners = np.array([[[0, 0]], [[w, 0]], [[w, h]], [[0, h]]], np.float64)
    try:
        outline = cv2.perspectiveTransform(corners, np.asarray(candidate.homography, np.float64))[:, 0]
        pts = np.round(outline * st + [offset, 0]).astype(np.int32)
        if np.all(np.abs(pts) < 1e5):
            cv2.polylines(canvas, [pts.reshape(-1, 1, 2)], True, colour, 2, cv2.LINE_AA)
    except cv2.error:
        pass
    text = label or f"place {candidate.place_id}  score {candidate.score:.0f}"
    cv2.putText(canvas, text, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
    return canvas
