# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Grid cells that must not vote: what the camera always sees, learned from the map, and what
the user masks out.

A fisheye lens's black ring, a car's hood, a robot's bumper or a burnt-in timestamp look the
same in every frame. Their cells match each other under the identity homography in every pair
and add inliers to every place, true or not. The map shows which cells these are: a cell's
local descriptors (L2-normalised) barely change from place to place, so the norm of their mean
over the map's places is close to 1, where a cell that sees the world has a mean of varied
directions and a small norm. Cells above ``threshold`` are static.

``CellStatistics`` keeps the per-cell sum over the places (a few hundred KB), so appending to a
map or inserting keyframes updates the mask without reading the stored grids. Below
``MIN_PLACES`` places nothing is learned (any cell looks constant over a few frames).

The user's mask (an image, white = use) and ROI margins (fractions of the frame cut off at the
left, right, top and bottom, as RTAB-Map's) are combined with the learned mask; the result is
``usable``: (H, W) cells that may take part in matching.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..image_conversion import ImageConversionError, decode_file

__all__ = ["DEFAULT_THRESHOLD", "MAX_STATIC_SHARE", "MIN_PLACES", "MIN_USABLE_CELLS", "CellMask", "CellStatistics",
           "MaskError", "MaskSettings", "mask_picture", "user_mask"]

DEFAULT_THRESHOLD = 0.85
MIN_PLACES = 20
# Fewer usable cells than this leave too few matches to verify any place (DHE calls a candidate
# verified from 40 inlier matches): such a mask makes every score meaningless, so it is refused.
MIN_USABLE_CELLS = 64
# A learned mask that calls more than this share of the cells static is no camera overlay (a fisheye
# ring, a hood and a timestamp together cover about a third) but a camera that hardly moved: the map's
# frames are all alike, and such a mask is not applied when matching (``MapDatabase.usable_cells``).
MAX_STATIC_SHARE = 0.5


class MaskError(ValueError):
    """A mask that cannot be used: unreadable, of another shape than the frames, or masking everything."""


@dataclass
class CellStatistics:
    """Running sum of each cell's L2-normalised local descriptor over the map's places."""

    sums: np.ndarray  # (C, H, W) float64
    count: int = 0

    @classmethod
    def empty(cls, local_shape: tuple[int, int, int]) -> "CellStatistics":
        return cls(np.zeros(local_shape, np.float64), 0)

    def add(self, grids: np.ndarray) -> None:
        """Grids (N, C, H, W), as stored (L2-normalised along C)."""
        self.sums += np.asarray(grids, dtype=np.float64).sum(axis=0)
        self.count += int(grids.shape[0])

    def constancy(self) -> np.ndarray:
        """(H, W): norm of the mean descriptor, 1 for a cell that is the same in every place."""
        if self.count == 0:
            return np.zeros(self.sums.shape[1:])
        return np.linalg.norm(self.sums, axis=0) / self.count


@dataclass(frozen=True)
class MaskSettings:
    """How the map's mask is made: ``threshold`` in (0, 1] (1: learn nothing), the user's
    ``user_usable`` cells (None: all), and the ROI margins it came from (for the record)."""

    threshold: float = DEFAULT_THRESHOLD
    user_usable: np.ndarray | None = field(default=None, compare=False)
    roi: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    user_file: str | None = None

    def __post_init__(self):
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold)
                and 0 < self.threshold <= 1):
            raise MaskError(f"the static-cell threshold must be above 0 and at most 1, not {self.threshold}")


@dataclass(frozen=True)
class CellMask:
    """``usable``: (H, W) cells that may vote; ``static``: cells learned to be static (None when
    too few places to learn); ``user``: cells the user's mask or ROI leaves out."""

    usable: np.ndarray
    static: np.ndarray | None
    user: np.ndarray
    places: int

    @classmethod
    def derive(cls, stats: CellStatistics, settings: MaskSettings) -> "CellMask":
        shape = stats.sums.shape[1:]
        user = ~settings.user_usable if settings.user_usable is not None else np.zeros(shape, bool)
        static = stats.constancy() > settings.threshold if stats.count >= MIN_PLACES else None
        usable = ~user & (~static if static is not None else True)
        return cls(np.asarray(usable, bool), static, user, stats.count)

    def check_workable(self, threshold: float) -> None:
        """MaskError when fewer than ``MIN_USABLE_CELLS`` cells may vote (``threshold``: the static
        threshold in force, named in the advice)."""
        usable, cells = int(self.usable.sum()), self.usable.size
        if usable < MIN_USABLE_CELLS:
            static = int(self.static.sum()) if self.static is not None else 0
            raise MaskError(f"the mask leaves {usable} of {cells} cells to match ({static} learned static at "
                            f"--static-threshold {threshold:g}, {int(self.user.sum())} masked by the user), fewer "
                            f"than the {MIN_USABLE_CELLS} a place needs to be verified: every score would be 0; "
                            "raise --static-threshold (1 learns none) or mask less")

    @property
    def all_usable(self) -> bool:
        return bool(self.usable.all())

    def summary(self) -> str:
        cells = self.usable.size
        if self.static is None:
            learned = f"static cells: not learned ({self.places} places; {MIN_PLACES} needed)"
        else:
            n = int(self.static.sum())
            learned = f"static cells: {n} of {cells} ({100 * n / cells:.0f} %)"
        user = int(self.user.sum())
        return learned + (f"; masked by the user: {user} of {cells}" if user else "")


def user_mask(grid: tuple[int, int], mask_file: str | None = None, roi=(0.0, 0.0, 0.0, 0.0),
              frame_size: tuple[int, int] | None = None) -> np.ndarray | None:
    """(H, W) usable cells from the user's mask image (white = use; a cell is usable when most
    of its pixels are) and ROI margins (left, right, top, bottom fractions); None when neither
    is given. MaskError for an unreadable file, a mask of another shape than the frames
    (``frame_size`` (width, height)), bad margins, or nothing left to match."""
    left, right, top, bottom = roi
    if any(not (math.isfinite(v) and 0 <= v < 1) for v in roi) or left + right >= 1 or top + bottom >= 1:
        raise MaskError(f"ROI margins must be fractions in [0, 1) that leave part of the frame, not {list(roi)}")
    if mask_file is None and not any(roi):
        return None
    h, w = grid
    usable = np.ones((h, w), bool)
    if mask_file is not None:
        try:
            image = decode_file(mask_file, cv2.IMREAD_GRAYSCALE)
        except (FileNotFoundError, ImageConversionError) as exc:
            raise MaskError(f"cannot read the mask: {exc}") from None
        if image is None:
            raise MaskError(f"cannot read the mask {mask_file}: not an image OpenCV can decode")
        if frame_size is not None:
            aspect, frame_aspect = image.shape[1] / image.shape[0], frame_size[0] / frame_size[1]
            if abs(aspect / frame_aspect - 1) > 0.02:
                raise MaskError(f"the mask {mask_file} is {image.shape[1]}x{image.shape[0]} but the frames are "
                                f"{frame_size[0]}x{frame_size[1]}: draw it at the camera's resolution")
        usable &= cv2.resize((image > 127).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) >= 0.5
    cols, rows = (np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h
    usable &= ((cols >= left) & (cols <= 1 - right))[None, :] & ((rows >= top) & (rows <= 1 - bottom))[:, None]
    if not usable.any():
        raise MaskError("the mask and ROI leave no cell to match: nothing would be recognised")
    return usable


def mask_picture(frame: np.ndarray | None, mask: CellMask, size: int = 384) -> np.ndarray:
    """An RGB picture of the mask: the frame (or grey) with static cells red and the user's cells blue."""
    h, w = mask.usable.shape
    base = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA) if frame is not None else \
        np.full((size, size, 3), 128, np.uint8)
    tint = np.zeros((h, w, 3), np.float32)
    if mask.static is not None:
        tint[mask.static] = (255, 0, 0)
    tint[mask.user] = (0, 0, 255)
    alpha = cv2.resize((~mask.usable).astype(np.float32), (size, size), interpolation=cv2.INTER_NEAREST)[..., None]
    tint = cv2.resize(tint, (size, size), interpolation=cv2.INTER_NEAREST)
    out = base.astype(np.float32) * (1 - 0.6 * alpha) + tint * 0.6 * alpha
    for i in range(1, h):  # the grid, faintly
        out[i * size // h, :] = out[i * size // h, :] * 0.7
    for j in range(1, w):
        out[:, j * size // w] = out[:, j * size // w] * 0.7
    return out.clip(0, 255).astype(np.uint8)
