# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Synthetic data with known geometry: random homographies and warped feature grids.

Used by tests and benchmarks (and by training on unlabelled images, where the true warp is
known). Nothing here downloads anything.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .geometry import homography_from_four_points, image_corners
from .matching import grid_keypoints


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
