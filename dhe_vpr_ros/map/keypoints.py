# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Each place's classical local features (ORB keypoints and descriptors): the map layer that lets a
loop closure be checked by two-view geometry, independently of the learned score.

Why ORB: 500 binary descriptors of 32 bytes with their keypoints fit in 18 KB a place, and every
widely used loop-closure detector ends with such a check (RTAB-Map, VINS-Mono, ORB-SLAM), whose
inlier counts are geometry in pixels and mean about the same in every environment.

Detection sees the frame in grey, resized to a width of ``MIN_WIDTH`` .. ``MAX_WIDTH`` pixels
(small frames are upscaled: a 100 px crop has too few corners at its own size; large ones
downscaled: the cost stays bounded). Keypoints are kept in that detection frame's pixels.

A place's row (``ROW_BYTES``, little-endian): ``count`` (u16; ``ABSENT`` for a place whose frame
was never described, e.g. added by an older version), the detection frame's width and height
(u16 each), a reserved u16, then ``FEATURES`` keypoints as (x, y) u16 in quarter pixels, then
``FEATURES`` descriptors of 32 bytes. Unused slots are zero.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["ABSENT", "FEATURES", "Keypoints", "MAX_WIDTH", "MIN_WIDTH", "ROW_BYTES", "RowCodec", "absent_rows",
           "decode_row", "describe", "encode_row"]

FEATURES = 500  # per place in the map (the query frame may detect more: ``verify_features``)
MIN_WIDTH, MAX_WIDTH = 320, 1280  # detection frame width
DESCRIPTOR_BYTES = 32
HEADER = np.dtype([("count", "<u2"), ("width", "<u2"), ("height", "<u2"), ("reserved", "<u2")])
ROW_BYTES = HEADER.itemsize + FEATURES * 4 + FEATURES * DESCRIPTOR_BYTES  # 18,008
ABSENT = 0xFFFF
SUBPIXEL = 4  # keypoint coordinates are stored in quarter pixels


@dataclass(frozen=True)
class Keypoints:
    """One frame's features: ``points`` (N, 2) float32 x, y in pixels of the detection frame of
    ``frame`` (width, height); ``descriptors`` (N, 32) uint8 ORB."""

    points: np.ndarray
    descriptors: np.ndarray
    frame: tuple[int, int]

    def __len__(self) -> int:
        return len(self.points)

    def cells(self, grid: tuple[int, int]) -> np.ndarray:
        """(N,) index of the grid cell (rows x columns of the network's grid) each keypoint is in."""
        rows, cols = grid
        r = np.clip((self.points[:, 1] * rows / self.frame[1]).astype(np.int64), 0, rows - 1)
        c = np.clip((self.points[:, 0] * cols / self.frame[0]).astype(np.int64), 0, cols - 1)
        return r * cols + c


def _grey(image: np.ndarray) -> np.ndarray:
    image = np.ascontiguousarray(image)
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return image.reshape(image.shape[:2])


def describe(image: np.ndarray, features: int = FEATURES) -> Keypoints:
    """ORB keypoints and descriptors of an RGB (or grey) uint8 frame; a frame without corners (flat
    grey, a few pixels) gives none, never an error."""
    grey = _grey(image)
    height, width = grey.shape
    target = min(max(width, MIN_WIDTH), MAX_WIDTH)
    if target != width:
        scale = target / width
        size = (target, max(1, int(round(height * scale))))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    frame = (int(grey.shape[1]), int(grey.shape[0]))
    found, descriptors = cv2.ORB_create(nfeatures=int(features)).detectAndCompute(grey, None)
    if descriptors is None or not found:
        return Keypoints(np.zeros((0, 2), np.float32), np.zeros((0, DESCRIPTOR_BYTES), np.uint8), frame)
    points = np.array([k.pt for k in found], dtype=np.float32).reshape(-1, 2)
    return Keypoints(points, np.ascontiguousarray(descriptors, dtype=np.uint8), frame)


def encode_row(keypoints: Keypoints | None) -> np.ndarray:
    """(ROW_BYTES,) uint8: the place's row (the strongest ``FEATURES`` keypoints; None: absent)."""
    row = np.zeros(ROW_BYTES, np.uint8)
    header = np.zeros(1, HEADER)
    if keypoints is None:
        header["count"] = ABSENT
    else:
        n = min(len(keypoints), FEATURES)
        header["count"], header["width"], header["height"] = n, *keypoints.frame
        coords = np.clip(np.rint(keypoints.points[:n] * SUBPIXEL), 0, 0xFFFF).astype("<u2")
        start = HEADER.itemsize
        row[start:start + coords.nbytes] = coords.reshape(-1).view(np.uint8)
        start += FEATURES * 4
        row[start:start + n * DESCRIPTOR_BYTES] = keypoints.descriptors[:n].reshape(-1)
    row[:HEADER.itemsize] = header.view(np.uint8)
    return row


def decode_row(row: np.ndarray) -> Keypoints | None:
    """The keypoints a row holds, None for an absent one; ValueError for a row that cannot be one."""
    row = np.asarray(row, dtype=np.uint8).reshape(-1)
    if row.size != ROW_BYTES:
        raise ValueError(f"a keypoint row has {ROW_BYTES} bytes, not {row.size}")
    header = row[:HEADER.itemsize].view(HEADER)[0]
    count = int(header["count"])
    if count == ABSENT:
        return None
    width, height = int(header["width"]), int(header["height"])
    if count > FEATURES or not (width and height):
        raise ValueError(f"a keypoint row says {count} keypoints in a {width}x{height} frame")
    start = HEADER.itemsize
    points = row[start:start + count * 4].view("<u2").reshape(count, 2).astype(np.float32) / SUBPIXEL
    start += FEATURES * 4
    descriptors = row[start:start + count * DESCRIPTOR_BYTES].reshape(count, DESCRIPTOR_BYTES).copy()
    return Keypoints(points, descriptors, (width, height))


def absent_rows(count: int) -> np.ndarray:
    """(count, ROW_BYTES) rows of places whose frames were never described."""
    return np.tile(encode_row(None), (count, 1))


class RowCodec:
    """Keypoint rows as the map's row files (``grids.GridFile`` / ``SpillFile``) store them: the
    bytes as they are (the codec interface of ``codec.GridCodec``)."""

    compact = False

    def row_bytes(self, shape=None) -> int:
        return ROW_BYTES

    def encode(self, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(rows, dtype=np.uint8).reshape(-1, ROW_BYTES)

    def decode(self, raw: np.ndarray, shape=None) -> np.ndarray:
        return raw

    def same_as(self, other) -> bool:
        return isinstance(other, RowCodec)
