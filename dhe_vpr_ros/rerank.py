"""Re-ranking of retrieved candidates: learned homography (DHE), RANSAC, or none.

All re-rankers take the same inputs (the query's local grid, the K candidates' grids and
their global similarities) and return the same ``RerankResult``, so the map database and the
node switch between them by name.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .matching import Matches, count_inliers, grid_keypoints, mutual_nearest_neighbours, robust_homographies

RERANKERS = ("dhe", "ransac", "none")


@dataclass
class RerankResult:
    """scores: (K,) per candidate in input order; order: (K,) candidate indices, best first;
    homographies: (K, 3, 3) query -> candidate pixels of the network input frame (identity
    where unknown); matches: the mutual-NN matches the score was computed on (None for 'none')."""

    scores: torch.Tensor
    order: torch.Tensor
    homographies: torch.Tensor
    matches: Matches | None = None


def _order(scores: torch.Tensor) -> torch.Tensor:
    """Best first; ties keep the retrieval order (candidates arrive sorted by similarity)."""
    return torch.sort(scores.float(), descending=True, stable=True).indices


class Reranker:
    name = "base"

    def __call__(self, query_local: torch.Tensor, candidate_local: torch.Tensor,
                 global_similarity: torch.Tensor) -> RerankResult:  # pragma: no cover - abstract
        raise NotImplementedError


class NoReranker(Reranker):
    """Keep the global-descriptor order; the score is the global similarity."""

    name = "none"

    def __call__(self, query_local, candidate_local, global_similarity):
        k = candidate_local.shape[0]
        eye = torch.eye(3, device=candidate_local.device).expand(k, 3, 3).clone()
        return RerankResult(global_similarity, _order(global_similarity), eye)


class _PatchMatchingReranker(Reranker):
    def __init__(self, stride: int, threshold_patches: float):
        self.stride = stride
        self.threshold_px = threshold_patches * stride

    def _setup(self, query_local, candidate_local):
        h, w = query_local.shape[-2:]
        kps = grid_keypoints(h, w, self.stride, device=query_local.device)
        matches = mutual_nearest_neighbours(query_local, candidate_local)
        return kps, matches


class DHEReranker(_PatchMatchingReranker):
    """Score = mutual-NN matches consistent with the regressed homography (3 patches)."""

    name = "dhe"

    CPU_CHUNK = 2  # pairs per transformer pass on a CPU (see HomographyRegressor.homographies)

    def __init__(self, model, stride: int = 16, threshold_patches: float = 3.0,
                 chunk_size: int | str | None = "auto"):
        super().__init__(stride, threshold_patches)
        self.model = model
        self.chunk_size = chunk_size

    def chunk_for(self, device: torch.device) -> int | None:
        if self.chunk_size == "auto":
            return None if device.type != "cpu" else self.CPU_CHUNK
        return self.chunk_size

    @torch.no_grad()
    def __call__(self, query_local, candidate_local, global_similarity):
        kps, matches = self._setup(query_local, candidate_local)
        homographies = self.model.homographies(query_local, candidate_local,
                                               self.chunk_for(candidate_local.device))
        scores = count_inliers(homographies, kps, kps, matches, self.threshold_px)
        return RerankResult(scores, _order(scores), homographies, matches)


class RansacReranker(_PatchMatchingReranker):
    """Score = inliers of an OpenCV RANSAC / USAC_MAGSAC homography on the same matches."""

    name = "ransac"

    def __init__(self, stride: int = 16, threshold_patches: float = 1.5, method: str = "ransac"):
        super().__init__(stride, threshold_patches)
        self.method = method

    @torch.no_grad()
    def __call__(self, query_local, candidate_local, global_similarity):
        kps, matches = self._setup(query_local, candidate_local)
        homographies, inliers = robust_homographies(kps, kps, matches, self.threshold_px, self.method)
        device = candidate_local.device
        scores = torch.from_numpy(inliers).to(device)
        return RerankResult(scores, _order(scores),
                            torch.from_numpy(homographies).float().to(device), matches)


def make_reranker(name: str, model=None, stride: int = 16, **options) -> Reranker:
    """Factory by name: 'dhe' needs the model; options go to the re-ranker's constructor."""
    if name == "dhe":
        if model is None:
            raise ValueError("the 'dhe' re-ranker needs a model with a homography regressor")
        return DHEReranker(model, stride=stride, **options)
    if name == "ransac":
        return RansacReranker(stride=stride, **options)
    if name == "none":
        return NoReranker()
    raise ValueError(f"unknown re-ranker {name!r}; choose from {', '.join(RERANKERS)}")
