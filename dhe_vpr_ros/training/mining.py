# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Partial hard-negative mining for the triplet loss of the joint stage."""
from __future__ import annotations

import numpy as np
import torch

from ..method.localizer import normalise
from ..method.models import VPRModel
from .config import TrainConfig
from .pairs import load_square, sample_rng

__all__ = ["NegativeMiner", "train_mode"]


class NegativeMiner:
    """Partial hard-negative mining: the hardest ``negatives`` of ``pool`` random candidates,
    by cached global descriptors refreshed every ``refresh`` queries."""

    def __init__(self, images, excluded, cfg: TrainConfig, size: int):
        self.images, self.excluded, self.cfg, self.size = images, excluded, cfg, size
        self.cache: torch.Tensor | None = None
        self.queries_since_refresh = 0

    @torch.no_grad()
    def refresh(self, model: VPRModel, device: torch.device) -> None:
        model.eval()
        out = []
        for start in range(0, len(self.images), 16):
            batch = torch.stack([torch.from_numpy(load_square(f, self.size))
                                 for f in self.images[start:start + 16]]).to(device)
            out.append(model.embed(normalise(batch, model)).global_.float().cpu())
        self.cache = torch.cat(out)
        self.queries_since_refresh = 0
        train_mode(model)

    def negatives(self, model, device, query_global: torch.Tensor, indices, epoch: int) -> torch.Tensor:
        if self.cache is None or self.queries_since_refresh >= self.cfg.cache_refresh:
            self.refresh(model, device)
        chosen = []
        for q, index in zip(query_global.detach().float().cpu(), indices):
            rng = sample_rng(self.cfg.seed + 7, epoch, int(index))
            allowed = np.setdiff1d(np.arange(len(self.images)), self.excluded[int(index)])
            if len(allowed) < self.cfg.negatives:
                raise ValueError("not enough negatives for triplet mining; add more images/places")
            pool = rng.choice(allowed, size=min(self.cfg.mining_pool, len(allowed)), replace=False)
            sims = self.cache[pool] @ q
            chosen.append(pool[torch.topk(sims, self.cfg.negatives).indices.numpy()])
        self.queries_since_refresh += len(indices)
        return torch.stack([torch.stack([torch.from_numpy(load_square(self.images[j], self.size)) for j in row])
                            for row in chosen]).to(device)


def train_mode(model: VPRModel) -> None:
    """Regressor in training mode; the backbone's normalisation statistics stay frozen (small
    batches of one place would corrupt BatchNorm's running averages)."""
    model.train()
    model.backbone.eval()
