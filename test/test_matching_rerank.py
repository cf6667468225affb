# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
import torch

from dhe_vpr_ros.method.geometry import corner_error, warp_points
from dhe_vpr_ros.method.matching import (count_inliers, grid_keypoints, mutual_nearest_neighbours,
                                         reprojection_errors, robust_homographies)
from dhe_vpr_ros.method.models import build_model
from dhe_vpr_ros.method.rerank import make_reranker
from dhe_vpr_ros.training.synthetic import random_homographies, warped_feature_grids

GRID, STRIDE, SIZE = 24, 16, 384


def _translation(dx_patches, dy_patches):
    h = torch.eye(3)
    h[0, 2], h[1, 2] = dx_patches * STRIDE, dy_patches * STRIDE
    return h


def test_grid_keypoints_are_patch_centres_row_major():
    kps = grid_keypoints(24, 24, 16)
    assert kps.shape == (576, 2)
    assert kps[0].tolist() == [8.0, 8.0] and kps[1].tolist() == [24.0, 8.0]
    assert kps[24].tolist() == [8.0, 24.0] and kps[-1].tolist() == [376.0, 376.0]


def test_mutual_nn_finds_true_correspondences_for_every_candidate_at_once():
    hs = torch.stack([_translation(2, 1), _translation(-3, 0), _translation(0, 4)])
    g = torch.Generator().manual_seed(0)
    query, cands = warped_feature_grids(hs, GRID, STRIDE, dim=64, generator=g)
    matches = mutual_nearest_neighbours(query, cands)
    kps = grid_keypoints(GRID, GRID, STRIDE)
    for k, h in enumerate(hs):
        target = warp_points(h, kps)
        in_view = ((target > 0) & (target < SIZE)).all(-1)
        true_partner = ((target[:, 1] - 8) / 16 * GRID + (target[:, 0] - 8) / 16).round().long()
        # every visible position is matched to its true partner ...
        assert matches.valid[k][in_view].all()
        assert torch.equal(matches.partner[k][in_view], true_partner[in_view])
        # ... and positions with no true partner rarely form a (chance) mutual pair
        spurious = matches.valid[k] & ~in_view
        assert spurious.sum() <= 0.1 * (~in_view).sum()


def test_inlier_count_prefers_true_homography_and_ransac_recovers_it():
    g = torch.Generator().manual_seed(1)
    hs = random_homographies(4, SIZE, max_shift=0.12, generator=g)
    query, cands = warped_feature_grids(hs, GRID, STRIDE, dim=64, generator=g)
    kps = grid_keypoints(GRID, GRID, STRIDE)
    matches = mutual_nearest_neighbours(query, cands)
    wrong = hs @ random_homographies(4, SIZE, max_shift=0.12, generator=g)
    true_count = count_inliers(hs, kps, kps, matches, 1.5 * STRIDE)
    wrong_count = count_inliers(wrong, kps, kps, matches, 1.5 * STRIDE)
    assert (true_count > wrong_count).all()
    assert (true_count > 0.5 * matches.counts).all()
    estimated, inliers = robust_homographies(kps, kps, matches, 1.5 * STRIDE, "ransac")
    err = corner_error(torch.from_numpy(estimated).float(), hs, SIZE, SIZE)
    assert (err < STRIDE).all(), err  # within one patch at every corner on average
    errors = reprojection_errors(hs, kps, kps, matches)
    assert torch.isinf(errors[~matches.valid]).all()


def _query_with_distractors(num_distractors=7, seed=2):
    g = torch.Generator().manual_seed(seed)
    h_true = random_homographies(1, SIZE, max_shift=0.1, generator=g)
    query, true_cand = warped_feature_grids(h_true, GRID, STRIDE, dim=64, generator=g)
    distractors = torch.nn.functional.normalize(torch.randn(num_distractors, 64, GRID, GRID, generator=g), dim=1)
    cands = torch.cat([distractors[:3], true_cand, distractors[3:]])  # true one at index 3
    sims = torch.linspace(0.9, 0.5, len(cands))  # retrieval put the true one 4th
    return query, cands, sims, h_true[0]


def test_ransac_and_magsac_rerankers_rank_true_candidate_first():
    query, cands, sims, h_true = _query_with_distractors()
    for method in ("ransac", "magsac"):
        result = make_reranker(method, stride=STRIDE)(query, cands, sims)
        assert result.order[0].item() == 3, method
        assert result.scores[3] > result.scores[torch.arange(8) != 3].max()
        assert corner_error(result.homographies[3], h_true, SIZE, SIZE) < STRIDE


def test_none_reranker_keeps_global_order():
    query, cands, sims, _ = _query_with_distractors()
    shuffled = sims[torch.tensor([2, 0, 1, 3, 4, 5, 6, 7])]
    result = make_reranker("none")(query, cands, shuffled)
    assert result.order.tolist() == [1, 2, 0, 3, 4, 5, 6, 7]
    assert torch.equal(result.scores, shuffled)


def test_dhe_reranker_batched_equals_one_pair_at_a_time():
    model = build_model("efficientnet_lite0", "light", pretrained=False).eval()
    torch.nn.init.normal_(model.regressor.linear.weight, std=1e-3)  # make H depend on the input
    query, cands, sims, _ = _query_with_distractors(num_distractors=5)
    query = torch.nn.functional.normalize(query[:, :, :], dim=0)
    reranker = make_reranker("dhe", model=model, stride=STRIDE, regressed=0)  # the regressor on every candidate
    batched = reranker(query, cands, sims[:6])
    singles = [reranker(query, cands[k:k + 1], sims[k:k + 1]) for k in range(6)]
    single_h = torch.cat([s.homographies for s in singles])
    assert torch.allclose(batched.homographies, single_h, atol=1e-3, rtol=1e-4)
    assert torch.equal(batched.scores, torch.cat([s.scores for s in singles]))
    assert not torch.allclose(batched.homographies[0], batched.homographies[1])


def test_the_cascade_regresses_only_the_candidates_the_shift_start_ranks_first():
    """regressed=N: the N candidates whose shift start explains most matches get exactly what the
    full re-ranker gives them (the regressor ran on them); the others keep their refitted shift
    start; with N >= K the cascade is the full re-ranker."""
    from dhe_vpr_ros.method.matching import count_inliers, grid_keypoints, mutual_nearest_neighbours
    from dhe_vpr_ros.method.refine import refine_homographies, shift_hypotheses
    model = build_model("efficientnet_lite0", "light", pretrained=False).eval()
    torch.nn.init.normal_(model.regressor.linear.weight, std=1e-3)
    query, cands, sims, h_true = _query_with_distractors(num_distractors=7)
    query = torch.nn.functional.normalize(query, dim=0)
    seen = []
    original = model.homographies
    model.homographies = lambda q, c, chunk=None: seen.append(c.shape[0]) or original(q, c, chunk)
    full = make_reranker("dhe", model=model, stride=STRIDE, regressed=0)(query, cands, sims)
    assert seen == [8]
    cascade = make_reranker("dhe", model=model, stride=STRIDE, regressed=2)
    result = cascade(query, cands, sims)
    assert seen == [8, 2]  # the regressor ran on 2 of the 8 candidates
    kps = grid_keypoints(GRID, GRID, STRIDE)
    matches = mutual_nearest_neighbours(query, cands)
    shift = shift_hypotheses(kps, kps, matches, STRIDE)
    shifted = refine_homographies(shift, kps, kps, matches, cascade.refine_rounds, cascade.refine_start_px,
                                  cascade.refine_end_px)
    rough = count_inliers(shift, kps, kps, matches, cascade.threshold_px)
    top = torch.sort(rough.float(), descending=True, stable=True).indices[:2]
    assert 3 in top.tolist()  # the true place is among them
    rest = torch.ones(8, dtype=torch.bool)
    rest[top] = False
    assert torch.allclose(result.homographies[top], full.homographies[top], atol=1e-4)
    assert torch.allclose(result.homographies[rest], shifted[rest], atol=1e-4)
    assert result.order[0].item() == full.order[0].item() == 3
    assert corner_error(result.homographies[3], h_true, SIZE, SIZE) < STRIDE
    all_of_them = make_reranker("dhe", model=model, stride=STRIDE, regressed=8)(query, cands, sims)
    assert torch.equal(all_of_them.homographies, full.homographies) and seen[-1] == 8


def test_unknown_reranker_name_is_a_clear_error():
    import pytest
    with pytest.raises(ValueError, match="unknown re-ranker 'magic'"):
        make_reranker("magic")
    with pytest.raises(ValueError, match="needs a model"):
        make_reranker("dhe")


def test_dhe_moves_only_verified_candidates_ahead_of_the_retrieval_order():
    model = build_model("efficientnet_lite0", "light", pretrained=False).eval()
    query, cands, sims, _ = _query_with_distractors()
    scores = make_reranker("dhe", model=model, stride=STRIDE, min_verified_inliers=0)(query, cands, sims).scores
    assert len(set(scores.tolist())) > 2  # the check below needs distinct scores on both sides
    threshold = float(scores.median()) + 0.5
    order = make_reranker("dhe", model=model, stride=STRIDE, min_verified_inliers=threshold)(query, cands, sims).order
    verified = sorted((i for i in range(len(scores)) if scores[i] >= threshold), key=lambda i: -float(scores[i]))
    assert order.tolist() == verified + [i for i in range(len(scores)) if scores[i] < threshold]
    never = make_reranker("dhe", model=model, stride=STRIDE, min_verified_inliers=10**6)(query, cands, sims)
    assert never.order.tolist() == list(range(len(scores)))  # nothing verified: retrieval order
    assert torch.equal(never.scores, scores)


def test_dhe_finds_a_large_shift_that_the_regressor_misses():
    """An untrained regressor returns about the identity; the true candidate is shifted by
    ~9 patches, far outside the first refinement window. The shift start still finds it."""
    g = torch.Generator().manual_seed(5)
    h_true = torch.eye(3)[None].clone()
    h_true[0, :2, 2] = torch.tensor([150.0, -110.0])
    query, true_cand = warped_feature_grids(h_true, GRID, STRIDE, dim=64, generator=g)
    distractors = torch.nn.functional.normalize(torch.randn(5, 64, GRID, GRID, generator=g), dim=1)
    cands = torch.cat([distractors[:2], true_cand, distractors[2:]])  # true one at index 2
    sims = torch.linspace(0.9, 0.5, len(cands))
    model = build_model("efficientnet_lite0", "light", pretrained=False).eval()
    without = make_reranker("dhe", model=model, stride=STRIDE, min_verified_inliers=0, shift_start=False)
    with_shift = make_reranker("dhe", model=model, stride=STRIDE, min_verified_inliers=0)
    before, after = without(query, cands, sims), with_shift(query, cands, sims)
    assert corner_error(before.homographies[2], h_true[0], SIZE, SIZE) > 100
    assert after.order[0].item() == 2
    assert corner_error(after.homographies[2], h_true[0], SIZE, SIZE) < STRIDE
    assert after.scores[2] > before.scores[2]
