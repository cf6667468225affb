# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""One differentiable training step (what DDP wraps) and the frozen backbone's feature cache."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..method.localizer import normalise
from ..method.models import VPRModel
from .config import TrainConfig
from .losses import corner_loss, rei_loss, triplet_loss

__all__ = ["FeatureCache", "StepOutput", "TrainStep"]


@dataclass
class StepOutput:
    loss: torch.Tensor
    corner: torch.Tensor  # (B,) 4-point error of each pair, NaN where unlabelled
    rei: torch.Tensor  # scalar REI loss (0 when not used)
    triplet: torch.Tensor
    homographies: torch.Tensor


class TrainStep(nn.Module):
    def __init__(self, model: VPRModel, cfg: TrainConfig):
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, query, positive, h_true, negatives=None, features=None) -> tuple:
        """The fields of a ``StepOutput`` as a tuple (what DDP can look into).
        ``features``: precomputed (query, positive) local grids (frozen backbone only)."""
        model, cfg = self.model, self.cfg
        fq = fp = None
        if features is not None:
            q_local, p_local = features
        else:
            with torch.set_grad_enabled(cfg.stage != "dhe" and torch.is_grad_enabled()):
                fq = model.embed(normalise(query, model))
                fp = model.embed(normalise(positive, model))
            q_local, p_local = fq.local, fp.local
        h = model.homographies(q_local, p_local)
        zero = torch.zeros((), device=h.device)
        loss, rei = zero, zero
        labelled = torch.isfinite(h_true).flatten(1).all(1) & torch.isfinite(h).flatten(1).all(1)
        corner = torch.full((h.shape[0],), float("nan"), device=h.device)
        if labelled.any():
            size = float(model.backbone.input_size)
            corner = corner.masked_scatter(labelled, corner_loss(h[labelled].detach(), h_true[labelled], size))
            if cfg.supervised_weight:
                robust = corner_loss(h[labelled], h_true[labelled], size, robust_px=cfg.robust_px)
                loss = loss + cfg.supervised_weight * robust.mean()
        if cfg.rei_weight:
            rei = rei_loss(torch.nan_to_num(h), q_local.float(), p_local.float(), model.backbone.stride).loss
            loss = loss + cfg.rei_weight * rei
        trip = zero
        if negatives is not None:
            b, m = negatives.shape[:2]
            fn = model.embed(normalise(negatives.flatten(0, 1), model)).global_.view(b, m, -1)
            trip = triplet_loss(fq.global_.float(), fp.global_.float(), fn.float(), cfg.margin)
            loss = loss + trip
        if not loss.requires_grad:  # nothing to learn from this batch: keep backward() valid
            loss = loss + 0.0 * h.sum()
        return loss, corner, rei, trip, h


class FeatureCache:
    """Local grids of a frozen backbone: each photo's map view once, and each query view once
    per warp set when ``--warp-repeats`` fixes the sets (stage dhe on WarpedPairs only)."""

    def __init__(self, cache_queries: bool):
        self.positives: dict[int, torch.Tensor] = {}
        self.queries: dict[tuple[int, int], torch.Tensor] | None = {} if cache_queries else None

    def has_all(self, warp_set: int, indices) -> bool:
        """Whether every view of ``indices`` in ``warp_set`` is cached (images then not needed)."""
        return self.queries is not None and all(
            (warp_set, int(i)) in self.queries and int(i) in self.positives for i in indices)

    @torch.no_grad()
    def grids(self, model: VPRModel, warp_set: int, indices, query, positive):
        ids = [int(i) for i in indices]
        self._fill(self.positives, ids, positive, model)
        if self.queries is None:
            q = model.embed(normalise(query, model)).local.float()
        else:
            self._fill(self.queries, [(warp_set, i) for i in ids], query, model)
            q = torch.stack([self.queries[(warp_set, i)] for i in ids]).to(query.device).float()
        return q, torch.stack([self.positives[i] for i in ids]).to(query.device).float()

    @staticmethod
    def _fill(store: dict, keys: list, images: torch.Tensor, model: VPRModel) -> None:
        missing = [j for j, key in enumerate(keys) if key not in store]
        if missing:
            local = model.embed(normalise(images[missing], model)).local.half().cpu()
            for n, j in enumerate(missing):
                store[keys[j]] = local[n]
