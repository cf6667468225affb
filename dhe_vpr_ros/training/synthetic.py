# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Synthetic data with known geometry: random homographies and warped feature grids.

Used by tests and benchmarks (and by training on unlabelled images, where the true warp is
known). Nothing here downloads anything.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..method.geometry import homography_from_four_points, image_corners
from ..method.matching import grid_keypoints

__all__ = ["OVERLAYS", "camera_overlay", "random_feature_field", "random_homographies", "sample_field",
           "warped_feature_grids"]


def random_homographies(n: int, size: float, max_shift: float = 0.15,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, 3, 3) homographies that move each image corner by up to ``max_shift * size`` pixels."""
    corners = image_corners(size, size).expand(n, 4, 2)
    shifts = (torch.rand(n, 4, 2, generator=generator) * 2 - 1) * max_shift * size
    return homography_from_four_points(corners, corners + shifts)


def random_feature_field(dim: int, cells: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(dim, cells, cells) random features; sampled bilinearly it is smooth within a cell."""
    return torch.randn(dim, cells, cells, generator=generator)


def sample_field(field: torch.Tensor, points: torch.Tensor, size: float) -> torch.Tensor:
    """Features (dim, N) of ``field`` spanning a ``size`` pixel frame at points (N, 2)."""
    normalised = (points / size) * 2 - 1  # align_corners=False convention
    sampled = F.grid_sample(field.unsqueeze(0), normalised.view(1, 1, -1, 2), mode="bilinear",
                            padding_mode="border", align_corners=False)
    return sampled[0, :, 0]


def warped_feature_grids(homographies: torch.Tensor, grid: int = 24, stride: int = 16, dim: int = 64,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A query grid and K candidate grids that see the query scene through known homographies.

    homographies: (K, 3, 3) mapping query pixels to candidate pixels. A candidate position
    whose pre-image falls inside the query frame gets the query scene's feature there; one
    outside gets features of unrelated content. Returns (query (dim, g, g), candidates
    (K, dim, g, g)), L2-normalised along dim.
    """
    size = grid * stride
    scene = random_feature_field(dim, grid, generator)
    elsewhere = random_feature_field(dim, grid, generator)
    kps = grid_keypoints(grid, grid, stride)
    query = sample_field(scene, kps, size)
    pre_images = torch.linalg.solve(homographies, torch.cat([kps, torch.ones(len(kps), 1)], 1).T).transpose(1, 2)
    pre_images = pre_images[..., :2] / pre_images[..., 2:3]  # (K, N, 2)
    inside = ((pre_images >= 0) & (pre_images <= size)).all(dim=-1)  # (K, N)
    cands = []
    for k in range(homographies.shape[0]):  # test-data generation only
        seen = sample_field(scene, pre_images[k], size)
        unseen = sample_field(elsewhere, kps, size)
        cands.append(torch.where(inside[k], seen, unseen))
    candidates = torch.stack(cands).view(-1, dim, grid, grid)
    return F.normalize(query.view(dim, grid, grid), dim=0), F.normalize(candidates, dim=1)


OVERLAYS = ("ring", "hood", "timestamp")


def camera_overlay(image, kinds=OVERLAYS):
    """What a robot's camera sees of itself in every frame, drawn onto an RGB uint8 image: the
    black ring of a fisheye lens (``ring``), a car's hood over the bottom fifth (``hood``, a
    fixed texture) and a burnt-in timestamp box (``timestamp``, always the same text). The same
    for every frame of a given size, as on a real robot."""
    import cv2
    import numpy as np

    unknown = set(kinds) - set(OVERLAYS)
    if unknown:
        raise ValueError(f"unknown overlay {sorted(unknown)}; choose from {', '.join(OVERLAYS)}")
    out = np.ascontiguousarray(image).copy()
    h, w = out.shape[:2]
    if "hood" in kinds:
        rng = np.random.default_rng(7)  # fixed: the hood looks the same in every frame
        band = h - h * 4 // 5
        texture = cv2.resize(rng.integers(40, 200, (max(band // 4, 2), max(w // 8, 2), 3)).astype(np.uint8),
                             (w, band), interpolation=cv2.INTER_LINEAR)
        out[h - band:] = texture
    if "ring" in kinds:
        ring = np.zeros((h, w), np.uint8)
        cv2.ellipse(ring, (w // 2, h // 2), (w // 2, h // 2), 0, 0, 360, 255, -1)
        out[ring == 0] = 0
    if "timestamp" in kinds:
        x1, y1 = max(w // 3, 12), max(h // 10, 6)
        out[1:1 + y1, 1:1 + x1] = 0  # drawn last, on top, as cameras burn it in
        cv2.putText(out, "2026-12-03 10:00", (2, y1 - 1), cv2.FONT_HERSHEY_PLAIN, y1 / 14, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out
