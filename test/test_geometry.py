# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
import torch

from dhe_vpr_ros.method.geometry import (corner_error, homography_from_four_points, image_corners, scale_homography,
                                         warp_points)
from dhe_vpr_ros.training.synthetic import random_homographies


def _known_h(dtype=torch.float64):
    return torch.tensor([[1.1, 0.05, 12.0], [-0.03, 0.95, -7.0], [2e-4, -1e-4, 1.0]], dtype=dtype)


def test_dlt_recovers_known_homography_from_four_exact_points():
    h_true = _known_h()
    src = torch.tensor([[10.0, 20.0], [350.0, 15.0], [370.0, 360.0], [30.0, 340.0]], dtype=torch.float64)
    dst = warp_points(h_true, src)
    h = homography_from_four_points(src, dst)
    assert torch.allclose(h, h_true, atol=1e-5)


def test_batched_dlt_matches_per_item():
    g = torch.Generator().manual_seed(1)
    src = torch.rand(16, 4, 2, generator=g, dtype=torch.float64) * 384
    dst = src + torch.randn(16, 4, 2, generator=g, dtype=torch.float64) * 20
    batched = homography_from_four_points(src, dst)
    single = torch.stack([homography_from_four_points(s, d) for s, d in zip(src, dst)])
    assert torch.allclose(batched, single, atol=1e-9)
    assert torch.allclose(warp_points(batched, src), dst, atol=1e-6)


def test_dlt_float32_is_accurate_enough_for_pixels():
    h_true = random_homographies(8, 384.0, generator=torch.Generator().manual_seed(3))
    corners = image_corners(384, 384).expand(8, 4, 2)
    h = homography_from_four_points(corners, warp_points(h_true, corners))
    assert corner_error(h, h_true, 384, 384).max() < 1e-2


def test_warp_points_inverse_round_trip_and_broadcast():
    h = _known_h().float()
    pts = torch.rand(5, 2) * 384
    back = warp_points(torch.linalg.inv(h), warp_points(h, pts))
    assert torch.allclose(back, pts, atol=1e-3)
    many = warp_points(torch.stack([h, torch.eye(3)]), pts.unsqueeze(0))
    assert many.shape == (2, 5, 2)
    assert torch.allclose(many[1], pts)


def test_scale_homography_maps_resized_frames():
    h = _known_h()
    pts = torch.rand(6, 2, dtype=torch.float64) * 384
    # original query is 2x the network frame in x, 1.5x in y; map is 0.5x in both
    h_orig = scale_homography(h, (2.0, 1.5), (0.5, 0.5))
    pts_orig = pts * torch.tensor([2.0, 1.5], dtype=torch.float64)
    expected = warp_points(h, pts) * 0.5
    assert torch.allclose(warp_points(h_orig, pts_orig), expected, atol=1e-6)


def test_dlt_is_differentiable():
    src = image_corners(384, 384).requires_grad_(True)
    dst = (src.detach() + torch.tensor([[5.0, 3.0], [-4.0, 2.0], [1.0, -6.0], [3.0, 3.0]])).requires_grad_(True)
    h = homography_from_four_points(src, dst)
    h.sum().backward()
    assert torch.isfinite(dst.grad).all() and dst.grad.abs().sum() > 0
