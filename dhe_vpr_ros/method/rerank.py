# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Re-ranking of retrieved candidates: learned homography (DHE), RANSAC, MAGSAC, or none.

All re-rankers take the same inputs (the query's local grid, the K candidates' grids and
their global similarities) and return the same ``RerankResult``, so the map database and the
node switch between them by name (``RERANKERS``, ``make_reranker``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .matching import Matches, count_inliers, grid_keypoints, mutual_nearest_neighbours, robust_homographies
from .refine import refine_from_starts, refine_homographies, shift_hypotheses
from .timing import Stages

__all__ = ["DEFAULT_REFINE_ROUNDS", "DEFAULT_REGRESSED", "MAX_REFINE_ROUNDS", "MIN_VERIFIED_INLIERS", "RERANKERS",
           "RerankResult", "Reranker", "make_reranker"]

RERANKERS = ("dhe", "ransac", "magsac", "none")
# Rounds of inlier refitting after the regressor (0: publish the regressed homography), and the
# inlier window (in patches) they shrink through. Chosen by benchmarks/homography_accuracy.py and
# benchmarks/recall_real.py: see README "Measured" (a 4- or 6-patch first window gained recall on
# low-resolution crops but lost accuracy on synthetic views).
DEFAULT_REFINE_ROUNDS = 4
MAX_REFINE_ROUNDS = 20  # the gain stops after 3 to 4; more only costs time
REFINE_START_PATCHES = 3.0
REFINE_END_PATCHES = 1.5
# A DHE score below this (mutual-NN inliers) is no geometric evidence: wrong places reach 15-27
# on the demo. Such candidates keep their retrieval order behind the verified ones, so that a
# query no candidate verifies is answered as retrieval alone answers it.
MIN_VERIFIED_INLIERS = 40
# The regressor runs on the candidates whose matches' most common shift explains most of them (a
# cascade): the rest keep the refitted shift start, the score they would have had in all but a
# few cases. 4 of K=32 kept Recall@1 within 0.5 point on the real sets and made DHE K=32 cost
# 1.15x MAGSAC's time instead of 1.8x (doc/speed.md); 0 runs it on every candidate.
DEFAULT_REGRESSED = 4


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


def _verified_order(scores: torch.Tensor, min_inliers: float) -> torch.Tensor:
    """Candidates with at least ``min_inliers`` best first, then the rest in retrieval order
    (they tie below every count, and ties keep the retrieval order)."""
    return _order(torch.where(scores.float() >= min_inliers, scores.float(), -1.0))


class Reranker:
    """``usable``: (H*W,) bool grid cells that may vote (the map's static-cell and user mask), or None;
    ``stages``: where the time of each part goes (``timing.Stages``), or None."""

    name = "base"

    def __call__(self, query_local: torch.Tensor, candidate_local: torch.Tensor,
                 global_similarity: torch.Tensor, usable: torch.Tensor | None = None,
                 stages: Stages | None = None) -> RerankResult:  # pragma: no cover - abstract
        raise NotImplementedError


class NoReranker(Reranker):
    """Keep the global-descriptor order; the score is the global similarity."""

    name = "none"

    def __call__(self, query_local, candidate_local, global_similarity, usable=None, stages=None):
        k = candidate_local.shape[0]
        eye = torch.eye(3, device=candidate_local.device).expand(k, 3, 3).clone()
        return RerankResult(global_similarity, _order(global_similarity), eye)


class _PatchMatchingReranker(Reranker):
    def __init__(self, stride: int, threshold_patches: float):
        self.stride = stride
        self.threshold_px = threshold_patches * stride

    def _setup(self, query_local, candidate_local, usable):
        h, w = query_local.shape[-2:]
        kps = grid_keypoints(h, w, self.stride, device=query_local.device)
        matches = mutual_nearest_neighbours(query_local, candidate_local, usable)
        return kps, matches


class DHEReranker(_PatchMatchingReranker):
    """Score = mutual-NN matches consistent with the homography (within 3 patches): the
    regressed one, refitted ``refine_rounds`` times to the matches it explains (or the matches'
    most common shift refitted the same way, where that fits more of them). Only candidates
    with ``min_verified_inliers`` or more are moved ahead of the retrieval order."""

    name = "dhe"

    def __init__(self, model, stride: int = 16, threshold_patches: float = 3.0,
                 chunk_size: int | str | None = "auto", refine_rounds: int = DEFAULT_REFINE_ROUNDS,
                 min_verified_inliers: float = MIN_VERIFIED_INLIERS, shift_start: bool = True,
                 regressed: int = DEFAULT_REGRESSED):
        super().__init__(stride, threshold_patches)
        if refine_rounds < 0:
            raise ValueError(f"refine_rounds must be 0 or more, not {refine_rounds}")
        if regressed < 0:
            raise ValueError(f"regressed must be 0 (every candidate) or more, not {regressed}")
        self.regressed = regressed
        self.model = model
        self.chunk_size = chunk_size
        self.refine_rounds = refine_rounds
        self.refine_start_px = REFINE_START_PATCHES * stride
        self.refine_end_px = REFINE_END_PATCHES * stride
        self.min_verified_inliers = min_verified_inliers
        self.shift_start = shift_start

    def chunk_for(self, device: torch.device) -> int | None:
        """Pairs per transformer pass: all K on a GPU, a cache-sized few on a CPU."""
        if self.chunk_size == "auto":
            return None if device.type != "cpu" else self.model.regressor.cpu_chunk()
        return self.chunk_size

    def refine(self, homographies: torch.Tensor, keypoints: torch.Tensor, matches: Matches) -> torch.Tensor:
        """(K, 3, 3) regressed homographies refitted to their inliers as this re-ranker scores
        them (``refine_rounds`` rounds, window 3 -> 1.5 patches), or the refitted shift start
        where that fits more matches within the last window; unchanged for 0 rounds."""
        if not self.refine_rounds:
            return homographies
        starts = [homographies]
        if self.shift_start:
            starts.append(shift_hypotheses(keypoints, keypoints, matches, self.stride).to(homographies.dtype))
        return refine_from_starts(torch.stack(starts), keypoints, keypoints, matches, self.refine_rounds,
                                  self.refine_start_px, self.refine_end_px, self.refine_end_px)

    def cascades(self, candidates: int) -> bool:
        """Whether the regressor runs on a part of ``candidates`` only (``regressed``)."""
        return bool(self.regressed and self.refine_rounds and self.shift_start and candidates > self.regressed)

    def cascade(self, query_local: torch.Tensor, candidate_local: torch.Tensor, keypoints: torch.Tensor,
                matches: Matches, stages: Stages | None = None) -> torch.Tensor:
        """(K, 3, 3): every candidate's refitted shift start, except for the ``regressed`` ones
        whose shift start explains most matches (ties: the retrieval order): for those the refitted
        regressed homography where it fits more matches within the last window, as ``refine``
        chooses between the two starts. Both starts are refitted in one batch."""
        stages = stages or Stages(candidate_local.device)
        k = candidate_local.shape[0]
        with stages("shift_start"):
            shift = shift_hypotheses(keypoints, keypoints, matches, self.stride).to(candidate_local.dtype)
            top = _order(count_inliers(shift, keypoints, keypoints, matches, self.threshold_px))[:self.regressed]
        with stages("regressor"):
            regressed = self.model.homographies(query_local, candidate_local[top],
                                                self.chunk_for(candidate_local.device))
        with stages("refine"):
            both = Matches(torch.cat([matches.partner, matches.partner[top]]),
                           torch.cat([matches.valid, matches.valid[top]]))
            fitted = refine_homographies(torch.cat([shift, regressed.to(shift.dtype)]), keypoints, keypoints, both,
                                         self.refine_rounds, self.refine_start_px, self.refine_end_px)
            shifted, fitted = fitted[:k], fitted[k:]
            some = Matches(matches.partner[top], matches.valid[top])
            better = count_inliers(fitted, keypoints, keypoints, some, self.refine_end_px) >= \
                count_inliers(shifted[top], keypoints, keypoints, some, self.refine_end_px)
        out = shifted.clone()
        out[top] = torch.where(better[:, None, None], fitted, shifted[top])
        return out

    @torch.no_grad()
    def __call__(self, query_local, candidate_local, global_similarity, usable=None, stages=None):
        stages = stages or Stages(candidate_local.device)
        with stages("mutual_nn"):
            kps, matches = self._setup(query_local, candidate_local, usable)
        if self.cascades(candidate_local.shape[0]):
            homographies = self.cascade(query_local, candidate_local, kps, matches, stages)
        else:
            with stages("regressor"):
                chunk = self.chunk_for(candidate_local.device)
                regressed = self.model.homographies(query_local, candidate_local, chunk)
            with stages("refine"):
                homographies = self.refine(regressed, kps, matches)
        with stages("inliers"):
            scores = count_inliers(homographies, kps, kps, matches, self.threshold_px)
        return RerankResult(scores, _verified_order(scores, self.min_verified_inliers), homographies, matches)


class RansacReranker(_PatchMatchingReranker):
    """Score = inliers of an OpenCV RANSAC / USAC_MAGSAC homography on the same matches."""

    def __init__(self, stride: int = 16, threshold_patches: float = 1.5, method: str = "ransac"):
        super().__init__(stride, threshold_patches)
        self.method = method
        self.name = method

    @torch.no_grad()
    def __call__(self, query_local, candidate_local, global_similarity, usable=None, stages=None):
        stages = stages or Stages(candidate_local.device)
        with stages("mutual_nn"):
            kps, matches = self._setup(query_local, candidate_local, usable)
        with stages("estimator"):
            homographies, inliers = robust_homographies(kps, kps, matches, self.threshold_px, self.method)
        device = candidate_local.device
        scores = torch.from_numpy(inliers).to(device)
        return RerankResult(scores, _order(scores),
                            torch.from_numpy(homographies).float().to(device), matches)


def make_reranker(name: str, model=None, stride: int = 16, **options) -> Reranker:
    """Factory by name (``RERANKERS``): 'dhe' needs the model; options go to the re-ranker's
    constructor ('ransac' and 'magsac' are one class with OpenCV's two estimators)."""
    if name == "dhe":
        if model is None:
            raise ValueError("the 'dhe' re-ranker needs a model with a homography regressor")
        return DHEReranker(model, stride=stride, **options)
    if name in ("ransac", "magsac"):
        return RansacReranker(stride=stride, method=name, **options)
    if name == "none":
        return NoReranker()
    raise ValueError(f"unknown re-ranker {name!r}; choose from {', '.join(RERANKERS)}")
