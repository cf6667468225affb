# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
import math

import cv2
import numpy as np
import torch

from dhe_vpr_ros.method.geometry import corner_error
from dhe_vpr_ros.training.losses import corner_loss, rei_loss
from dhe_vpr_ros.method.models import build_model
from dhe_vpr_ros.training.synthetic import random_homographies, warped_feature_grids

SIZE, STRIDE = 384, 16


def test_rei_loss_is_lower_for_true_homography_than_perturbed():
    g = torch.Generator().manual_seed(0)
    hs = random_homographies(6, SIZE, max_shift=0.1, generator=g)
    query, cands = warped_feature_grids(hs, 24, STRIDE, dim=64, generator=g)
    queries = query.expand_as(cands)
    true = rei_loss(hs, queries, cands)
    perturbed = rei_loss(hs @ random_homographies(6, SIZE, max_shift=0.05, generator=g), queries, cands)
    assert true.used.all()
    assert (true.per_pair < perturbed.per_pair).all()
    # with the true warp, the only error left is the grid quantisation of the matches
    assert true.loss < STRIDE / 2


def test_rei_loss_skips_pairs_without_matches_but_keeps_the_graph():
    h = torch.eye(3).repeat(2, 1, 1).requires_grad_(True)
    grid = torch.nn.functional.normalize(torch.ones(2, 8, 24, 24), dim=1)  # all equal: 1 mutual match
    out = rei_loss(h, grid, grid)
    assert not out.used.any()
    out.loss.backward()
    assert h.grad is not None


def _warp_pair(image, h):
    return cv2.warpPerspective(image, h.numpy().astype(np.float64), (SIZE, SIZE), borderMode=cv2.BORDER_REFLECT)


def test_rei_gradients_reach_the_backbone(make_image):
    model = build_model("efficientnet_lite0", "light", pretrained=True)
    model.train()
    model.backbone.set_trainable_from(8)
    h_true = random_homographies(2, SIZE, max_shift=0.08, generator=torch.Generator().manual_seed(4))
    imgs = [make_image(i) for i in range(2)]
    q = torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in imgs])
    p = torch.stack([torch.from_numpy(_warp_pair(im, h)).permute(2, 0, 1).float() / 255 for im, h in zip(imgs, h_true)])
    fq, fp = model.embed(q), model.embed(p)
    h_pred = model.regressor.homographies(fq.local, fp.local)
    out = rei_loss(h_pred, fq.local, fp.local)
    assert out.used.all(), out.ransac_inliers
    out.loss.backward()
    trainable = model.backbone.blocks()[10]
    frozen = model.backbone.blocks()[0]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.parameters())
    assert all(p.grad is None for p in frozen.parameters())
    assert model.regressor.linear.weight.grad.abs().sum() > 0


def _light_regressor(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("efficientnet_lite0", "light", pretrained=False).regressor.train()


def _train_steps(regressor, steps: int, loss_of, generator) -> None:
    optim = torch.optim.Adam(regressor.parameters(), lr=3e-4)
    for _ in range(steps):
        hs = random_homographies(8, SIZE, max_shift=0.12, generator=generator)
        q, c = warped_feature_grids(hs, 24, STRIDE, dim=32, generator=generator)
        loss = loss_of(regressor.homographies(q, c), hs, q, c)
        optim.zero_grad()
        loss.backward()
        optim.step()


def _held_out(generator):
    val_h = random_homographies(16, SIZE, max_shift=0.12, generator=generator)
    val_q, val_c = warped_feature_grids(val_h, 24, STRIDE, dim=32, generator=generator)
    return val_h, val_q, val_c


def test_short_regressor_training_on_synthetic_pairs_lowers_rei_loss():
    """A fixed number of steps (no clock): the light regressor learns warps from the REI loss."""
    regressor = _light_regressor()
    g = torch.Generator().manual_seed(0)
    val_h, val_q, val_c = _held_out(g)

    def evaluate():
        with torch.no_grad():
            h = regressor.homographies(val_q, val_c)
            rei = rei_loss(h, val_q.expand_as(val_c), val_c).loss.item()
            return rei, corner_error(h, val_h, SIZE, SIZE).mean().item()

    loss_before, corner_before = evaluate()
    _train_steps(regressor, 80, lambda h, hs, q, c: rei_loss(h, q.expand_as(c), c).loss, g)
    loss_after, corner_after = evaluate()
    assert loss_after < 0.7 * loss_before, (loss_before, loss_after)
    assert corner_after < corner_before, (corner_before, corner_after)


def test_corner_loss_is_the_smoothed_four_point_error():
    g = torch.Generator().manual_seed(1)
    h = random_homographies(5, SIZE, max_shift=0.1, generator=g)
    exact = corner_loss(h, h, SIZE)
    assert torch.allclose(exact, torch.ones(5), atol=1e-3)  # sqrt(0 + 1 px^2)
    off = h @ random_homographies(5, SIZE, max_shift=0.05, generator=g)
    assert torch.allclose(corner_loss(off, h, SIZE, smoothing_px=0.0), corner_error(off, h, SIZE, SIZE), atol=1e-3)
    assert (corner_loss(off, h, SIZE) > exact).all()
    shift = torch.eye(3)
    shift[0, 2] = 1000.0
    far = shift @ h  # every corner 1000 px off: the robust form counts it as 64 log(1 + 1000 / 64)
    assert torch.allclose(corner_loss(far, h, SIZE, robust_px=64.0), torch.full((5,), 64 * math.log1p(1000 / 64)),
                          rtol=1e-3)


def test_supervised_corner_loss_lowers_the_corner_error_on_synthetic_pairs():
    """Fewer steps than REI needs, and a larger drop: the label is a direct signal."""
    regressor = _light_regressor(1)
    g = torch.Generator().manual_seed(2)
    val_h, val_q, val_c = _held_out(g)

    def error():
        with torch.no_grad():
            return corner_error(regressor.homographies(val_q, val_c), val_h, SIZE, SIZE).mean().item()

    before = error()
    _train_steps(regressor, 60, lambda h, hs, q, c: corner_loss(h, hs, SIZE).mean(), g)
    after = error()
    assert after < 0.8 * before, (before, after)
