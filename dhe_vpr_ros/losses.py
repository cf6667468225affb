"""Training losses. REI: the paper's label-free loss for the homography regressor."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .matching import grid_keypoints, mutual_nearest_neighbours, reprojection_errors, robust_homographies


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


def triplet_loss(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                 margin: float = 0.1) -> torch.Tensor:
    """Triplet margin loss on L2-normalised global descriptors, averaged over the negatives.

    query, positive: (B, D); negatives: (B, M, D). Euclidean distances, as in the VPR
    benchmarks the paper follows (``nn.TripletMarginLoss(margin, p=2)`` per negative).
    """
    d_pos = (query - positive).norm(dim=-1, keepdim=True)  # (B, 1)
    d_neg = (query.unsqueeze(1) - negatives).norm(dim=-1)  # (B, M)
    return torch.relu(d_pos - d_neg + margin).mean()
