# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Training losses for the homography regressor and the global descriptor.

* ``corner_loss``: supervised, for pairs whose true homography is known (synthetic views):
  how far the frame's corners land from where the true homography puts them.
* ``rei_loss``: the paper's label-free loss, for real pairs without a homography.
* ``triplet_loss``: the global descriptor's retrieval loss (joint stage).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..method.geometry import image_corners, warp_points
from ..method.matching import grid_keypoints, mutual_nearest_neighbours, reprojection_errors, robust_homographies

__all__ = ["REIOutput", "corner_loss", "rei_loss", "triplet_loss"]


@dataclass
class REIOutput:
    """loss: scalar; per_pair: (B,) loss per pair (0 where unused); used: (B,) bool;
    ransac_inliers: (B,) the N of each pair."""

    loss: torch.Tensor
    per_pair: torch.Tensor
    used: torch.Tensor
    ransac_inliers: torch.Tensor


def rei_loss(homographies: torch.Tensor, query_local: torch.Tensor, positive_local: torch.Tensor,
             stride: int = 16, ransac_threshold_patches: float = 1.5) -> REIOutput:
    """Re-projection error of inliers (DESIGN.md step 4), batched over B pairs.

    homographies: (B, 3, 3) predicted, query -> positive pixels; grids: (B, C, H, W).
    Mutual-NN matches -> OpenCV RANSAC (threshold 1.5 patches) gives an inlier count N per
    pair; the pair's loss is the mean of the N smallest re-projection errors of the matches
    under the predicted H. RANSAC runs on detached data and only contributes the integer N,
    so gradients flow through the errors into the regressor and, via the correlation volume,
    the backbone. Pairs with < 4 matches or no RANSAC solution contribute nothing.
    """
    h, w = query_local.shape[-2:]
    kps = grid_keypoints(h, w, stride, device=query_local.device)
    with torch.no_grad():
        matches = mutual_nearest_neighbours(query_local, positive_local)
    _, inliers = robust_homographies(kps, kps, matches, ransac_threshold_patches * stride, "ransac")
    inliers_t = torch.from_numpy(inliers).to(query_local.device)
    errors = reprojection_errors(homographies, kps, kps, matches)  # (B, N), inf where unmatched
    smallest = errors.sort(dim=-1).values
    keep = torch.arange(smallest.shape[-1], device=smallest.device) < inliers_t.unsqueeze(-1)
    summed = torch.where(keep, smallest, torch.zeros_like(smallest)).sum(dim=-1)
    used = inliers_t > 0
    per_pair = summed / inliers_t.clamp_min(1)
    if used.any():
        loss = per_pair[used].mean()
    else:  # keep the graph so callers can always backward()
        loss = (homographies * 0.0).sum()
    return REIOutput(loss=loss, per_pair=per_pair, used=used, ransac_inliers=inliers_t)


def corner_loss(homographies: torch.Tensor, true_homographies: torch.Tensor, size: float,
                smoothing_px: float = 1.0, robust_px: float = 0.0) -> torch.Tensor:
    """Mean distance (pixels) between the frame corners mapped by the predicted and by the
    true homography: the 4-point error, as a loss. (B,) per pair.

    homographies, true_homographies: (B, 3, 3), query -> positive pixels of a ``size`` frame.
    Distances are Charbonnier-smoothed (sqrt(d^2 + s^2)), so the gradient stays bounded and
    defined at zero error. ``robust_px`` > 0 bends distances beyond it logarithmically
    (r log(1 + d / r)): a pair the regressor cannot yet solve still pulls, but no longer
    outweighs the many it nearly solves.
    """
    corners = image_corners(size, size, device=homographies.device, dtype=homographies.dtype)
    diff = warp_points(homographies, corners) - warp_points(true_homographies.to(homographies.dtype), corners)
    distance = (diff.pow(2).sum(-1) + smoothing_px ** 2).sqrt()
    if robust_px > 0:
        distance = robust_px * torch.log1p(distance / robust_px)
    return distance.mean(-1)


def triplet_loss(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                 margin: float = 0.1) -> torch.Tensor:
    """Triplet margin loss on L2-normalised global descriptors, averaged over the negatives.

    query, positive: (B, D); negatives: (B, M, D). Euclidean distances, as in the VPR
    benchmarks the paper follows (``nn.TripletMarginLoss(margin, p=2)`` per negative).
    """
    d_pos = (query - positive).norm(dim=-1, keepdim=True)  # (B, 1)
    d_neg = (query.unsqueeze(1) - negatives).norm(dim=-1)  # (B, M)
    return torch.relu(d_pos - d_neg + margin).mean()
