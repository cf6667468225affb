# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Synthetic second views of a photograph, with a known homography, at a chosen difficulty.

A photograph is taken to be a planar scene. The map image ("positive") is a crop of it; the
query is what a second camera sees of the same plane after a camera motion (out-of-plane tilt,
in-plane rotation, zoom, shift) and a change of light (exposure down to dusk, gamma, colour,
noise, blur, JPEG). Where the second camera sees beyond the photograph, another photograph
fills the frame, as unrelated surroundings would. The true homography maps query pixels to
map pixels, which is what the regressor predicts.

Difficulty is a band ``(low, high)`` inside ``[0, 1]``: every motion and light parameter is
drawn with a magnitude in that band of its maximum (``ViewRecipe``), so ``(0, 1)`` covers
everything up to the strongest perspective, and the three ``LEVELS`` split it for benchmarks.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

__all__ = ["LEVELS", "SyntheticView", "ViewRecipe", "change_light", "crop_to_frame", "overlap", "reach",
           "sample_motion", "synthetic_view"]

LEVELS = {"easy": (0.0, 1 / 3), "medium": (1 / 3, 2 / 3), "hard": (2 / 3, 1.0)}


@dataclass(frozen=True)
class ViewRecipe:
    """The strongest change at difficulty 1. Recorded in a training run's config.json."""

    max_tilt_deg: float = 60.0  # out-of-plane rotation of the scene plane (graf1 -> graf3: ~40)
    max_rotation_deg: float = 30.0  # in-plane rotation
    max_zoom: float = 2.0  # scale drawn in [1 / max_zoom, max_zoom]
    max_shift: float = 0.3  # camera shift, as a fraction of the frame
    min_overlap: float = 0.5  # the smaller view lies at least this much inside the other
    max_reach: float = 1.5  # the query's corners stay within this many frames of the map view (no horizon)
    crop: tuple[float, float] = (0.6, 0.9)  # the map view covers this share of the photo's sides
    min_exposure: float = 0.15  # dusk: light down to 15 %
    max_gamma: float = 2.0  # gamma drawn in [1 / max_gamma, max_gamma]
    max_noise: float = 0.04  # sensor noise standard deviation (image range 0..1)
    max_blur: float = 2.0  # Gaussian blur sigma in pixels (or motion blur of 3x that length)
    min_jpeg_quality: int = 25

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SyntheticView:
    """query, positive: RGB uint8 (S, S, 3); h_true (3, 3) maps query pixels to positive pixels."""

    query: np.ndarray
    positive: np.ndarray
    h_true: np.ndarray


def _magnitude(rng: np.random.Generator, band: tuple[float, float]) -> float:
    return float(rng.uniform(band[0], band[1]))


def _signed(rng: np.random.Generator, band: tuple[float, float]) -> float:
    return _magnitude(rng, band) * (1.0 if rng.random() < 0.5 else -1.0)


def _tilt(theta: float, axis: float, focal: float) -> np.ndarray:
    """Homography of a plane rotated by ``theta`` about an in-plane axis through its centre,
    seen by a pinhole of focal ``focal`` at distance ``focal`` (identity at theta = 0).
    Coordinates are centred on the frame."""
    ux, uy = math.cos(axis), math.sin(axis)
    c, s = math.cos(theta), math.sin(theta)
    # Rodrigues rotation about the unit axis (ux, uy, 0); only its first two columns matter
    r = np.array([[c + ux * ux * (1 - c), ux * uy * (1 - c), uy * s],
                  [ux * uy * (1 - c), c + uy * uy * (1 - c), -ux * s],
                  [-uy * s, ux * s, c]])
    plane_to_camera = np.column_stack([r[:, 0], r[:, 1], [0.0, 0.0, focal]])
    h = np.diag([focal, focal, 1.0]) @ plane_to_camera
    return h / h[2, 2]


def overlap(h: np.ndarray, size: float) -> float:
    """How much of the smaller of two square views lies inside the other: the area shared by
    the frame and its image under ``h``, over the smaller of the two areas (0 when ``h``
    folds the frame)."""
    square = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float32)
    moved = cv2.perspectiveTransform(square[None], h.astype(np.float64))[0].astype(np.float32)
    if not cv2.isContourConvex(moved.reshape(-1, 1, 2)):
        return 0.0
    shared, _ = cv2.intersectConvexConvex(square, moved)
    smaller = min(size * size, abs(cv2.contourArea(moved)))
    return float(shared / smaller) if smaller > 0 else 0.0


def reach(motion: np.ndarray, size: float) -> float:
    """How far (in frames) beyond the map view the query's corners land: 0 when inside it.
    Near the plane's horizon this grows without bound; such views are not useful pairs."""
    square = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float64)
    back = np.linalg.inv(motion)
    mapped = np.c_[square, np.ones(4)] @ back.T
    if (mapped[:, 2] <= 1e-9).any():
        return math.inf  # a corner beyond the horizon
    xy = mapped[:, :2] / mapped[:, 2:]
    return float(max(0.0, (-xy).max(), (xy - size).max()) / size)


def sample_motion(rng: np.random.Generator, size: int, band: tuple[float, float],
                  recipe: ViewRecipe = ViewRecipe(), attempts: int = 50) -> np.ndarray:
    """A camera motion (3, 3): map-view pixels -> query-view pixels of a ``size`` frame.

    Tilt, rotation, zoom and shift each get a magnitude in ``band`` of the recipe's maximum;
    the shift is halved until the views overlap enough (``recipe.min_overlap`` at the top of
    the band, proportionally less strict below it). A draw whose query corners reach further
    than ``recipe.max_reach`` frames from the map view (a view of the horizon) is drawn again.
    """
    motion = None
    for _ in range(attempts):
        motion = _draw_motion(rng, size, band, recipe)
        if reach(motion, size) <= recipe.max_reach:
            break
    return motion


def _draw_motion(rng: np.random.Generator, size: int, band: tuple[float, float], recipe: ViewRecipe,
                 attempts: int = 20) -> np.ndarray:
    centre = size / 2.0
    to_centre = np.array([[1, 0, -centre], [0, 1, -centre], [0, 0, 1]], np.float64)
    tilt = _tilt(math.radians(_magnitude(rng, band) * recipe.max_tilt_deg), rng.uniform(0, math.pi), float(size))
    angle = math.radians(_signed(rng, band) * recipe.max_rotation_deg)
    zoom = math.exp(_signed(rng, band) * math.log(recipe.max_zoom))
    rotate_zoom = np.diag([zoom, zoom, 1.0]) @ np.array(
        [[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    need = 1.0 - (1.0 - recipe.min_overlap) * band[1]
    direction = rng.uniform(-1.0, 1.0, 2)
    shift = _magnitude(rng, band) * recipe.max_shift * size
    for _ in range(attempts):
        back = np.array([[1, 0, centre + direction[0] * shift], [0, 1, centre + direction[1] * shift], [0, 0, 1]])
        motion = back @ rotate_zoom @ tilt @ to_centre
        if overlap(motion, size) >= need:
            return motion / motion[2, 2]
        shift *= 0.5
    return motion / motion[2, 2]  # shift ~0: overlap is as large as this tilt and zoom allow


def change_light(rng: np.random.Generator, image: np.ndarray, strength: float,
                 recipe: ViewRecipe = ViewRecipe()) -> np.ndarray:
    """Another visit's light and camera at ``strength`` in [0, 1]: exposure (down to dusk),
    colour cast, gamma, blur, sensor noise and JPEG. RGB uint8 in and out."""
    x = (image.astype(np.float32) / 255.0) ** 2.2  # to linear light
    exposure = math.exp(rng.uniform(math.log(recipe.min_exposure), math.log(1.3)) * strength)
    gains = 1.0 + rng.uniform(-0.15, 0.15, 3) * strength
    if exposure < 0.5:  # dusk is bluer
        gains = gains * np.array([0.85, 0.95, 1.1])
    x = np.clip(x * (exposure * gains).astype(np.float32), 0.0, 1.0) ** (1 / 2.2)
    x = x ** math.exp(_signed(rng, (0.0, strength)) * math.log(recipe.max_gamma))
    blur = rng.uniform(0.0, recipe.max_blur * strength)
    if blur > 0.3:
        if rng.random() < 0.5:
            x = cv2.GaussianBlur(x, (0, 0), blur)
        else:
            x = _motion_blur(x, blur * 3, rng.uniform(0, 180))
    noise = rng.uniform(0.0, recipe.max_noise * strength) / math.sqrt(max(exposure, 0.25))
    x = x + rng.normal(0.0, noise, x.shape).astype(np.float32)
    out = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
    quality = int(round(95 - (95 - recipe.min_jpeg_quality) * rng.uniform(0.0, strength)))
    if quality < 95:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
        out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else out
    return out


def _motion_blur(x: np.ndarray, length: float, angle_deg: float) -> np.ndarray:
    n = max(3, int(round(length)) | 1)
    kernel = np.zeros((n, n), np.float32)
    kernel[n // 2, :] = 1.0
    rot = cv2.getRotationMatrix2D((n / 2 - 0.5, n / 2 - 0.5), angle_deg, 1.0)
    kernel = cv2.warpAffine(kernel, rot, (n, n))
    return cv2.filter2D(x, -1, kernel / max(kernel.sum(), 1e-6))


def crop_to_frame(rng: np.random.Generator, photo_shape: tuple[int, ...], size: int,
                  crop: tuple[float, float]) -> np.ndarray:
    """(3, 3) photo pixels -> map-view pixels: a random crop of the photo, scaled to the frame."""
    h, w = photo_shape[:2]
    fx, fy = rng.uniform(*crop), rng.uniform(*crop)
    cw, ch = w * fx, h * fy
    x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    return np.array([[size / cw, 0, -x0 * size / cw], [0, size / ch, -y0 * size / ch], [0, 0, 1]], np.float64)


def synthetic_view(rng: np.random.Generator, photo: np.ndarray, size: int, band: tuple[float, float],
                   surroundings: np.ndarray | None = None, recipe: ViewRecipe = ViewRecipe(),
                   light: bool = True, to_map: np.ndarray | None = None) -> SyntheticView:
    """A (query, map) pair of one photograph (RGB uint8, any size) at difficulty ``band``.

    ``surroundings`` (RGB, any size) fills what the query camera sees beyond the photograph;
    without it that part is mirrored photograph. ``to_map`` fixes the map view's crop
    (``crop_to_frame``); by default it is drawn from ``rng``.
    """
    if to_map is None:
        to_map = crop_to_frame(rng, photo.shape, size, recipe.crop)
    positive = cv2.warpPerspective(photo, to_map, (size, size), flags=cv2.INTER_AREA)
    motion = sample_motion(rng, size, band, recipe)
    query_to_photo = np.linalg.inv(to_map) @ np.linalg.inv(motion)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    border = cv2.BORDER_REFLECT if surroundings is None else cv2.BORDER_CONSTANT
    query = cv2.warpPerspective(photo, query_to_photo, (size, size), flags=flags, borderMode=border)
    if surroundings is not None:
        inside = cv2.warpPerspective(np.full(photo.shape[:2], 255, np.uint8), query_to_photo, (size, size),
                                     flags=flags, borderMode=cv2.BORDER_CONSTANT)
        filler = cv2.resize(surroundings, (size, size), interpolation=cv2.INTER_AREA)
        query = np.where(inside[..., None] >= 128, query, filler)
    if light:
        query = change_light(rng, query, _magnitude(rng, band), recipe)
    h_true = np.linalg.inv(motion)
    return SyntheticView(np.ascontiguousarray(query), positive, h_true / h_true[2, 2])
