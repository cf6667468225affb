# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Refinement of regressed homographies: recovers the true one, batched == one at a time, and
the shift start rescues a regressed homography that is far off."""
import torch

from dhe_vpr_ros.method.geometry import corner_error, warp_points
from dhe_vpr_ros.method.matching import Matches, grid_keypoints, mutual_nearest_neighbours
from dhe_vpr_ros.method.refine import inlier_thresholds, refine_from_starts, refine_homographies, shift_hypotheses
from dhe_vpr_ros.training.synthetic import random_homographies, warped_feature_grids

SIZE, STRIDE = 384, 16


def _exact_matches_with_outliers(h_true: torch.Tensor, generator, outlier_share: float = 0.3):
    """Candidate keypoints at the exact images of the query keypoints, per candidate; a share
    of the matches point at a random wrong partner, and some are not mutual at all."""
    k = h_true.shape[0]
    kps = grid_keypoints(24, 24, STRIDE)
    n = len(kps)
    targets = warp_points(h_true, kps.expand(k, -1, -1))  # (K, N, 2)
    candidate_kps = targets.reshape(-1, 2)  # M = K * N points; candidate k's own are block k
    partner = torch.arange(n).expand(k, n) + (torch.arange(k) * n)[:, None]
    wrong = torch.rand(k, n, generator=generator) < outlier_share
    partner = torch.where(wrong, torch.randint(0, k * n, (k, n), generator=generator), partner)
    valid = torch.rand(k, n, generator=generator) > 0.1
    return kps, candidate_kps, Matches(partner, valid)


def test_refinement_recovers_a_known_homography_from_a_perturbed_one():
    g = torch.Generator().manual_seed(0)
    h_true = random_homographies(4, SIZE, max_shift=0.15, generator=g)
    kps, cand_kps, matches = _exact_matches_with_outliers(h_true, g)
    start = h_true @ random_homographies(4, SIZE, max_shift=0.04, generator=g)  # up to ~15 px off
    before = corner_error(start, h_true, SIZE, SIZE)
    assert (before > 3).all()
    refined = refine_homographies(start, kps, cand_kps, matches, rounds=4, high_px=48, low_px=24)
    after = corner_error(refined, h_true, SIZE, SIZE)
    assert (after < 1.0).all(), after


def test_refinement_batched_equals_one_at_a_time():
    g = torch.Generator().manual_seed(1)
    h_true = random_homographies(5, SIZE, max_shift=0.12, generator=g)
    query, cands = warped_feature_grids(h_true, 24, STRIDE, dim=64, generator=g)
    kps = grid_keypoints(24, 24, STRIDE)
    matches = mutual_nearest_neighbours(query, cands)
    start = h_true @ random_homographies(5, SIZE, max_shift=0.03, generator=g)
    batched = refine_homographies(start, kps, kps, matches, 4, 48, 24)
    single = torch.cat([refine_homographies(start[i:i + 1], kps, kps, Matches(matches.partner[i:i + 1],
                                            matches.valid[i:i + 1]), 4, 48, 24) for i in range(5)])
    assert corner_error(batched, single, SIZE, SIZE).max() < 1e-2  # float32 round-off only
    # on grid-quantised matches it still lands closer to the truth than it started
    assert (corner_error(batched, h_true, SIZE, SIZE) < corner_error(start, h_true, SIZE, SIZE)).all()


def test_too_few_inliers_keep_the_input_and_zero_rounds_change_nothing():
    g = torch.Generator().manual_seed(2)
    h_true = random_homographies(2, SIZE, max_shift=0.1, generator=g)
    kps, cand_kps, matches = _exact_matches_with_outliers(h_true, g)
    far = h_true.clone()
    far[:, 0, 2] += 300.0  # every match is far outside the threshold
    assert torch.equal(refine_homographies(far, kps, cand_kps, matches, 4, 48, 24), far)
    assert torch.equal(refine_homographies(far, kps, cand_kps, matches, 0, 48, 24), far)


def test_thresholds_hold_then_shrink():
    assert inlier_thresholds(0, 48, 24) == []
    assert inlier_thresholds(1, 48, 24) == [24.0]
    assert inlier_thresholds(4, 48, 24) == [48, 48, 36.0, 24.0]


def _translations(shifts) -> torch.Tensor:
    h = torch.eye(3).repeat(len(shifts), 1, 1)
    h[:, :2, 2] = torch.tensor(shifts, dtype=torch.float32)
    return h


def test_shift_hypotheses_find_the_most_common_displacement_per_candidate():
    g = torch.Generator().manual_seed(3)
    h_true = _translations([(48.0, -32.0), (-100.0, 70.0), (5.0, 3.0)])
    kps, cand_kps, matches = _exact_matches_with_outliers(h_true, g, outlier_share=0.4)
    found = shift_hypotheses(kps, cand_kps, matches, bin_px=STRIDE)
    assert found.shape == (3, 3, 3)
    assert torch.equal(found[:, 2], torch.tensor([0.0, 0.0, 1.0]).expand(3, 3))
    assert torch.equal(found[:, :2, :2], torch.eye(2).expand(3, 2, 2))
    assert ((found[:, :2, 2] - h_true[:, :2, 2]).abs() <= STRIDE / 2).all(), found[:, :2, 2]


def test_the_shift_start_rescues_a_far_off_homography_and_a_good_one_is_kept():
    g = torch.Generator().manual_seed(4)
    h_true = random_homographies(3, SIZE, max_shift=0.02, generator=g) @ _translations([(120.0, -90.0)] * 3)
    kps, cand_kps, matches = _exact_matches_with_outliers(h_true, g)
    regressed = h_true.clone()
    regressed[0, 0, 2] += 300.0  # candidate 0: the regressor missed by far more than any window
    shifts = shift_hypotheses(kps, cand_kps, matches, STRIDE)
    alone = refine_homographies(regressed, kps, cand_kps, matches, 4, 48, 24)
    both = refine_from_starts(torch.stack([regressed, shifts]), kps, cand_kps, matches, 4, 48, 24, score_px=24)
    assert corner_error(alone[:1], h_true[:1], SIZE, SIZE) > 100  # refinement alone cannot reach it
    assert (corner_error(both, h_true, SIZE, SIZE) < 1.0).all()
    # where both starts end on the truth (a tie), the regressed start's result is the one kept; one small
    # matrix product fits all candidates of a batch, so batches of another size round differently
    # (7e-5 px here): within 1e-3 px of refining the regressed starts alone
    assert corner_error(both[1:], alone[1:], SIZE, SIZE).max() < 1e-3
    # batched over candidates == one candidate at a time
    single = torch.cat([refine_from_starts(torch.stack([regressed, shifts])[:, i:i + 1], kps, cand_kps,
                                           Matches(matches.partner[i:i + 1], matches.valid[i:i + 1]), 4, 48, 24,
                                           score_px=24) for i in range(3)])
    assert corner_error(both, single, SIZE, SIZE).max() < 1e-2


def test_one_grid_fit_is_kornias_weighted_dlt_per_candidate():
    """The shared-grid normal matrices with each candidate's own (weighted) normalisation give kornia's
    ``find_homography_dlt`` on the same weighted correspondences (to a tenth of a pixel: kornia scales by the
    mean distance, ours by the root mean square): noisy partners, few and clustered inliers."""
    from kornia.geometry.homography import find_homography_dlt

    from dhe_vpr_ros.method.refine import _GridDLT
    g = torch.Generator().manual_seed(3)
    k = 6
    h_true = random_homographies(k, SIZE, max_shift=0.2, generator=g)
    kps = grid_keypoints(24, 24, STRIDE)
    partners = warp_points(h_true, kps.expand(k, -1, -1)) + 2.0 * torch.randn(k, len(kps), 2, generator=g)
    weights = (torch.rand(k, len(kps), generator=g) < 0.5).float()
    weights[0] = 0
    weights[0, [row * 24 + col for row in range(3) for col in range(4)]] = 1  # a dozen inliers in one corner
    ours = _GridDLT(kps, kps, partners).fit(weights)
    theirs = find_homography_dlt(kps.expand(k, -1, -1).double(), partners.double(), weights.double()).float()
    assert corner_error(ours, theirs, SIZE, SIZE).max() < 0.1, corner_error(ours, theirs, SIZE, SIZE)
