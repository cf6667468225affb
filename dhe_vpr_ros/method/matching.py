# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Dense patch matching between a query grid and K candidate grids, batched.

A feature grid is ``(C, H, W)`` (one image) or ``(K, C, H, W)`` (K images), L2-normalised
along C. Grid position ``i = row * W + col`` has its keypoint at the patch centre
``(stride * col + stride / 2, stride * row + stride / 2)`` in the network's input frame.
Matches are represented densely: for every query position, the index of its partner in
the candidate grid and a validity mask. Ragged per-pair match lists never appear in the
torch code, so nothing loops over candidates.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .geometry import warp_points

__all__ = ["RANSAC_METHODS", "Matches", "count_inliers", "grid_keypoints", "mutual_nearest_neighbours",
           "reprojection_errors", "robust_homographies"]


def grid_keypoints(height: int, width: int, stride: float, device=None,
                   dtype=torch.float32) -> torch.Tensor:
    """Patch-centre pixel coordinates (H*W, 2) of a grid, row-major (x varies fastest)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack([xs, ys], dim=-1).reshape(-1, 2) * stride + stride / 2.0


@dataclass
class Matches:
    """Mutual nearest neighbours of each query position in each candidate.

    partner: (K, N) long, index of the matched candidate position for each query position.
    valid:   (K, N) bool, True where the pair is a mutual nearest neighbour.
    """

    partner: torch.Tensor
    valid: torch.Tensor

    @property
    def counts(self) -> torch.Tensor:
        """(K,) number of mutual matches per candidate."""
        return self.valid.sum(dim=-1)


def _flatten(features: torch.Tensor) -> torch.Tensor:
    """(…, C, H, W) -> (…, C, H*W)."""
    return features.flatten(-2)


def mutual_nearest_neighbours(query: torch.Tensor, candidates: torch.Tensor,
                              usable: torch.Tensor | None = None) -> Matches:
    """Mutual NN between a query grid and K candidate grids in one pass.

    query: (C, H, W) shared by all candidates, or (K, C, H, W) one per candidate.
    candidates: (K, C, H', W'). usable: (H*W,) bool, the grid cells that may take part (same
    grid for query and candidates; None: all): a masked cell neither matches nor is matched,
    so it adds nothing to any score and changes no match between usable cells.
    Returns Matches with (K, H*W) tensors. Cost: one (K, N, M) similarity tensor, over the
    usable cells only when some are masked (a third of the grid under a fisheye ring).
    """
    q = _flatten(query)
    c = _flatten(candidates)
    if q.dim() == 2:
        q = q.unsqueeze(0)
    if usable is not None and not bool(usable.all()):
        return _mutual_among(q, c, usable.to(q.device).nonzero().squeeze(1))
    partner, mutual = _mutual(q, c)
    return Matches(partner=partner, valid=mutual)


def _mutual(q: torch.Tensor, c: torch.Tensor, chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(K or 1, C, N) and (K, C, M) -> each query cell's best candidate cell (K, N), and whether
    that cell's best is the query cell again (K, N). ``chunk`` candidates at a time keep the
    similarity in cache, and ``max(...).indices`` reduces it about twice as fast as ``argmax``
    (the same first-of-equal-maxima rule); measured at K=32 on a 2-core CPU: 46 -> 25 ms."""
    k = max(q.shape[0], c.shape[0])
    best_in_candidate = torch.empty(k, q.shape[-1], dtype=torch.long, device=c.device)
    back = torch.empty_like(best_in_candidate)
    for start in range(0, k, chunk):
        part = slice(start, start + chunk)
        similarity = torch.matmul((q if q.shape[0] == 1 else q[part]).transpose(-1, -2), c[part])  # (k, N, M)
        best_in_candidate[part] = similarity.max(dim=-1).indices
        back[part] = similarity.max(dim=-2).indices.gather(-1, best_in_candidate[part])
    positions = torch.arange(q.shape[-1], device=c.device)
    return best_in_candidate, back == positions


def _mutual_among(q: torch.Tensor, c: torch.Tensor, cells: torch.Tensor) -> Matches:
    """Mutual NN among ``cells`` (U,) only, returned on the whole grid (masked cells: invalid)."""
    k = max(q.shape[0], c.shape[0])
    partner = torch.zeros(k, q.shape[-1], dtype=torch.long, device=q.device)
    valid = torch.zeros(k, q.shape[-1], dtype=torch.bool, device=q.device)
    if cells.numel():
        partner_among, mutual = _mutual(q[..., cells], c[..., cells])
        partner[:, cells] = cells[partner_among]
        valid[:, cells] = mutual
    return Matches(partner=partner, valid=valid)


def reprojection_errors(homographies: torch.Tensor, query_keypoints: torch.Tensor,
                        candidate_keypoints: torch.Tensor, matches: Matches) -> torch.Tensor:
    """Distance (pixels) between H(query keypoint) and its matched candidate keypoint.

    homographies: (K, 3, 3); keypoints: (N, 2) and (M, 2). Returns (K, N), +inf where the
    query position has no valid match. Differentiable with respect to the homographies.
    """
    projected = warp_points(homographies, query_keypoints.unsqueeze(0))  # (K, N, 2)
    targets = candidate_keypoints[matches.partner]  # (K, N, 2)
    errors = (projected - targets).norm(dim=-1)
    return torch.where(matches.valid, errors, torch.full_like(errors, float("inf")))


def count_inliers(homographies: torch.Tensor, query_keypoints: torch.Tensor,
                  candidate_keypoints: torch.Tensor, matches: Matches,
                  threshold_px: float) -> torch.Tensor:
    """(K,) number of matches within ``threshold_px`` under each candidate's homography."""
    errors = reprojection_errors(homographies, query_keypoints, candidate_keypoints, matches)
    return (errors < threshold_px).sum(dim=-1)


RANSAC_METHODS = {
    "ransac": cv2.RANSAC,
    "magsac": cv2.USAC_MAGSAC,
}


def robust_homographies(query_keypoints: torch.Tensor, candidate_keypoints: torch.Tensor,
                        matches: Matches, threshold_px: float, method: str = "ransac",
                        max_iters: int = 2000, confidence: float = 0.995
                        ) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV RANSAC / USAC homography for each candidate on its mutual-NN matches.

    Runs on detached copies, so calling it never touches an autograd graph. Returns
    (H (K, 3, 3) float64, inlier counts (K,) int64). Pairs with fewer than 4 matches or no
    solution get the identity and 0 inliers.
    """
    if method not in RANSAC_METHODS:
        raise ValueError(f"unknown robust estimator {method!r}; choose from {sorted(RANSAC_METHODS)}")
    flag = RANSAC_METHODS[method]
    q_kps = query_keypoints.detach().cpu().numpy().astype(np.float32)
    c_kps = candidate_keypoints.detach().cpu().numpy().astype(np.float32)
    partner = matches.partner.detach().cpu().numpy()
    valid = matches.valid.detach().cpu().numpy()
    num = partner.shape[0]
    homographies = np.tile(np.eye(3), (num, 1, 1))
    inliers = np.zeros(num, dtype=np.int64)
    for k in range(num):  # OpenCV has no batched estimator; the matches were built batched.
        idx = np.flatnonzero(valid[k])
        if idx.size < 4:
            continue
        src = q_kps[idx]
        dst = c_kps[partner[k, idx]]
        h, mask = cv2.findHomography(src, dst, flag, ransacReprojThreshold=threshold_px,
                                     maxIters=max_iters, confidence=confidence)
        if h is None or mask is None:
            continue
        homographies[k] = h
        inliers[k] = int(mask.sum())
    return homographies, inliers
