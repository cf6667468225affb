# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Refinement of regressed homographies on the matches they explain.

The regressor's homography decides which mutual-NN matches are inliers (within the scoring
threshold); a weighted DLT over those inliers, repeated a few rounds with a shrinking
threshold, makes the homography as accurate as the matches allow. No random sampling: all
K candidates of a query are refined in one batched pass, at a small fixed cost. The weighted
DLT is the one of kornia's ``find_homography_dlt`` (the 9 x 9 normal matrix solved against ones,
each candidate's inliers normalised to centroid 0 and spread sqrt(2)), computed another way: the
query points are one grid shared by every candidate, so all K normal matrices of a round come from
one small matrix product (``_GridDLT``) instead of K design matrices (doc/speed.md has the timings).
(Normalising once by the whole grids instead, which is cheaper still, cost 1.5 points of Recall@1 on
ESSEX3IN1 and hundreds of pixels where the inliers are few and close together: the
DLT's least squares depend on the normalisation.)

Why not kornia's ``find_homography_dlt_iterated`` as a whole: it re-weights every
correspondence with a Gaussian of its error, so matches that are not mutual nearest neighbours
cannot be left out, and on graf1 -> graf3 with the shipped model it needed 8 solves to reach
what 4 rounds with a hard, shrinking threshold reach (6 px against 7 px).

Where the regressor misses a real second view by more than the first threshold (day against
night, low-resolution frames), refinement from it finds only a fraction of the matches that
agree. ``refine_from_starts`` therefore also refines from the matches' most common shift
(``shift_hypotheses``, a vote, not a sample) and keeps, per candidate, whichever start ends
with more inliers within the last (tightest) window. On the CoHOG crops this raised Recall@1
by 1-5 points; on synthetic views it left the median error as it was (README "Measured").
"""
from __future__ import annotations

import math

import torch

from .matching import Matches, count_inliers

__all__ = ["inlier_thresholds", "refine_from_starts", "refine_homographies", "shift_hypotheses"]

MIN_INLIERS = 8  # fewer than this: the fit is not trusted and the input homography is kept


def inlier_thresholds(rounds: int, high_px: float, low_px: float) -> list[float]:
    """The inlier threshold of each round: the first half at ``high_px`` (the regressed
    homography may be far off), then shrinking linearly to ``low_px``."""
    if rounds <= 0:
        return []
    hold = rounds // 2
    shrink = rounds - hold
    return [high_px] * hold + [high_px - (high_px - low_px) * (i + 1) / shrink for i in range(shrink)]


def _hartley(points: torch.Tensor) -> torch.Tensor:
    """(3, 3): the similarity taking ``points`` (N, 2) to centroid 0 and mean distance sqrt(2)."""
    centroid = points.mean(0)
    scale = math.sqrt(2.0) / (points - centroid).norm(dim=-1).mean().clamp_min(1e-8)
    return _similarity(centroid[None], scale[None])[0]


# the 6 distinct entries of a symmetric 3 x 3 matrix, in row-major order of its upper triangle
_UPPER = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
_SYMMETRIC = [_UPPER.index((min(i, j), max(i, j))) for i in range(3) for j in range(3)]  # 3 x 3 from _UPPER


class _GridDLT:
    """The weighted DLT of one query keypoint grid (N points, shared by all K candidates) against each
    candidate's partners, at the cost of one small matrix product a round.

    With ``p = (x, y, 1)`` a query point and ``(u, v)`` its partner, a correspondence's two rows are
    ``[0, -p, v p]`` and ``[p, 0, -u p]``, so the normal matrix ``sum w rows^T rows`` has only four
    distinct 3 x 3 blocks, each a weighted sum of ``P = p p^T`` over the grid: ``A`` (weights w), ``Bu``
    (w u), ``Bv`` (w v) and ``C`` (w (u^2 + v^2)):  ``[[A, 0, -Bu], [0, A, -Bv], [-Bu, -Bv, C]]``.
    ``P``'s 6 distinct entries per grid point are fixed, so all K candidates' sums are one (4K, N) x
    (N, 6) product of the weights with them. Each candidate's points are then normalised by its own
    weighted inliers' centroid and spread, which are in those sums too, and normalising only recombines
    them: the fit is kornia's ``find_homography_dlt`` on the inliers without K design matrices (kornia
    scales by the mean distance, these sums give the root mean square: the fits differ by hundredths of a
    pixel). In float64: the recombination cancels where the inliers are few and close together."""

    def __init__(self, query_points: torch.Tensor, candidate_grid: torch.Tensor, partners: torch.Tensor):
        self.t1, t2 = _hartley(query_points.double()), _hartley(candidate_grid.double())
        self.t2_inverse = torch.linalg.inv(t2)
        points = query_points.double() * self.t1[0, 0] + self.t1[:2, 2]  # (N, 2), grid-normalised
        p = torch.cat([points, torch.ones_like(points[:, :1])], -1)
        self.entries = torch.stack([p[:, i] * p[:, j] for i, j in _UPPER], -1)  # (N, 6)
        uv = partners.double() * t2[0, 0] + t2[:2, 2]  # (K, N, 2)
        self.factors = torch.stack([torch.ones_like(uv[..., 0]), uv[..., 0], uv[..., 1], uv.square().sum(-1)])

    def fit(self, weights: torch.Tensor) -> torch.Tensor:
        """(K, 3, 3) homographies minimising the weighted algebraic error (``weights`` (K, N)): the normal
        matrix solved against ones, as kornia's LU solver does; not finite where it is singular."""
        k, dtype, weights = weights.shape[0], weights.dtype, weights.double()
        sums = ((self.factors * weights).reshape(4 * k, -1) @ self.entries).view(4, k, 6)
        blocks = sums[..., _SYMMETRIC].view(4, k, 3, 3)
        query_t, partner_t = _hartley_from_sums(blocks)
        a, bu, bv, c = _renormalised(blocks, query_t, partner_t)
        zero = torch.zeros_like(a)
        normal = torch.cat([torch.cat([a, zero, -bu], -1), torch.cat([zero, a, -bv], -1),
                            torch.cat([-bu, -bv, c], -1)], -2)  # (K, 9, 9)
        solution, info = torch.linalg.solve_ex(normal, torch.ones_like(normal[..., 0]))
        solution = torch.where((info == 0)[:, None], solution, torch.full_like(solution, float("nan")))
        h = self.t2_inverse @ torch.linalg.inv(partner_t) @ solution.view(-1, 3, 3) @ query_t @ self.t1
        return (h / h[:, 2:3, 2:3]).to(dtype)


def _hartley_from_sums(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, 3, 3) twice: per candidate, the similarities taking its weighted query points and its weighted
    partners to centroid 0 and root-mean-square distance sqrt(2), read off the blocks (4, K, 3, 3) of
    weighted sums: ``A`` holds sum w, sum w x, sum w y and sum w (x^2 + y^2); ``Bu``, ``Bv`` and ``C``
    the partners' sum w u, sum w v and sum w (u^2 + v^2). (Hartley's RMS variant of kornia's mean-distance
    normalisation: the same centring, a scale within the spread of the points; no pass over the points.)"""
    a, bu, bv, c = blocks
    total = a[:, 2, 2].clamp_min(1e-12)
    query_centre = torch.stack([a[:, 0, 2], a[:, 1, 2]], -1) / total[:, None]  # (K, 2)
    query_square = (a[:, 0, 0] + a[:, 1, 1]) / total - query_centre.square().sum(-1)
    partner_centre = torch.stack([bu[:, 2, 2], bv[:, 2, 2]], -1) / total[:, None]
    partner_square = c[:, 2, 2] / total - partner_centre.square().sum(-1)
    return (_similarity(query_centre, (2.0 / query_square.clamp_min(1e-24)).sqrt()),
            _similarity(partner_centre, (2.0 / partner_square.clamp_min(1e-24)).sqrt()))


def _similarity(centre: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(K, 3, 3): x -> scale (x - centre), for centres (K, 2) and scales (K,)."""
    transform = torch.zeros(centre.shape[0], 3, 3, dtype=centre.dtype, device=centre.device)
    transform[:, 0, 0] = transform[:, 1, 1] = scale
    transform[:, :2, 2] = -scale[:, None] * centre
    transform[:, 2, 2] = 1.0
    return transform


def _renormalised(blocks: torch.Tensor, query_t: torch.Tensor, partner_t: torch.Tensor) -> torch.Tensor:
    """The blocks (4, K, 3, 3) of the sums over ``p p^T`` weighted by (1, u, v, u^2 + v^2), as they are with
    ``p`` mapped by ``query_t`` and ``(u, v)`` by ``partner_t`` (K, 3, 3 similarities each)."""
    ones, by_u, by_v, by_square = blocks
    scale, cu, cv = partner_t[:, 0, 0, None, None], partner_t[:, 0, 2, None, None], partner_t[:, 1, 2, None, None]
    # u' = s u + cu, v' = s v + cv (cu, cv already scaled)
    a = ones
    bu = scale * by_u + cu * ones
    bv = scale * by_v + cv * ones
    c = scale.square() * by_square + 2 * scale * (cu * by_u + cv * by_v) + (cu.square() + cv.square()) * ones
    out = torch.stack([a, bu, bv, c])
    return query_t @ out @ query_t.transpose(-1, -2)


@torch.no_grad()
def refine_homographies(homographies: torch.Tensor, query_keypoints: torch.Tensor,
                        candidate_keypoints: torch.Tensor, matches: Matches, rounds: int,
                        high_px: float, low_px: float) -> torch.Tensor:
    """Refit each homography to its inlier matches, ``rounds`` times.

    homographies: (K, 3, 3) query -> candidate pixels; keypoints (N, 2) and (M, 2); matches
    with (K, N) partner/valid. Returns (K, 3, 3). A candidate keeps its current homography in
    a round where it has fewer than ``MIN_INLIERS`` inliers or the fit is not finite.
    """
    thresholds = inlier_thresholds(rounds, high_px, low_px)
    if not thresholds:
        return homographies
    dtype = homographies.dtype
    query_points, grid = query_keypoints.to(dtype), candidate_keypoints.to(dtype)
    targets = grid[matches.partner]  # (K, N, 2): the same partners every round
    dlt = _GridDLT(query_points, grid, targets)
    homogeneous_t = torch.cat([query_points, torch.ones_like(query_points[:, :1])], -1).T  # (3, N)
    k = homographies.shape[0]
    current = homographies
    for threshold in thresholds:
        projected = (current.reshape(3 * k, 3) @ homogeneous_t).view(k, 3, -1)  # one product for all K
        squared = (projected[:, :2] / projected[:, 2:] - targets.transpose(1, 2)).square().sum(1)
        weights = (matches.valid & (squared < threshold * threshold)).to(dtype)
        enough = weights.sum(-1) >= MIN_INLIERS
        if not enough.any():
            break
        fitted = dlt.fit(weights)
        update = enough & torch.isfinite(fitted).flatten(1).all(-1)
        current = torch.where(update[:, None, None], fitted, current)
    return current


def shift_hypotheses(query_keypoints: torch.Tensor, candidate_keypoints: torch.Tensor, matches: Matches,
                     bin_px: float) -> torch.Tensor:
    """(K, 3, 3) pure translations: per candidate, the displacement shared by the most mutual
    matches (a vote over ``bin_px`` cells; deterministic, batched over K). Keypoints (N, 2), (M, 2)."""
    shifts = candidate_keypoints[matches.partner] - query_keypoints.unsqueeze(0)  # (K, N, 2)
    reach = float(torch.cat([query_keypoints, candidate_keypoints]).abs().max())
    half = int(math.ceil(reach / bin_px))
    side = 2 * half + 1
    cells = (torch.round(shifts / bin_px).long() + half).clamp(0, side - 1)
    votes = torch.zeros(shifts.shape[0], side * side, dtype=query_keypoints.dtype, device=shifts.device)
    votes.scatter_add_(1, cells[..., 0] * side + cells[..., 1], matches.valid.to(votes.dtype))
    best = votes.argmax(dim=1)
    out = torch.eye(3, dtype=query_keypoints.dtype, device=shifts.device).repeat(shifts.shape[0], 1, 1)
    out[:, 0, 2] = (torch.div(best, side, rounding_mode="floor") - half).to(out.dtype) * bin_px
    out[:, 1, 2] = (best % side - half).to(out.dtype) * bin_px
    return out


@torch.no_grad()
def refine_from_starts(starts: torch.Tensor, query_keypoints: torch.Tensor, candidate_keypoints: torch.Tensor,
                       matches: Matches, rounds: int, high_px: float, low_px: float,
                       score_px: float) -> torch.Tensor:
    """Refine every start (S, K, 3, 3) in one batch; per candidate, keep the refined start with
    the most inliers within ``score_px`` (the earlier start on a tie). Returns (K, 3, 3)."""
    s, k = starts.shape[:2]
    repeated = Matches(matches.partner.repeat(s, 1), matches.valid.repeat(s, 1))
    refined = refine_homographies(starts.reshape(s * k, 3, 3), query_keypoints, candidate_keypoints, repeated,
                                  rounds, high_px, low_px)
    inliers = count_inliers(refined, query_keypoints, candidate_keypoints, repeated, score_px).view(s, k)
    best = inliers.argmax(dim=0)  # torch.argmax returns the first of equal maxima
    return refined.view(s, k, 3, 3)[best, torch.arange(k, device=best.device)]
