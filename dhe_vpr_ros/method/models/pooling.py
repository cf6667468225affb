# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Global pooling of a dense feature grid into one retrieval descriptor."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GeM(nn.Module):
    """Generalised-mean pooling with a learned exponent ``p`` (init 3), as in the paper."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        """grid (B, C, H, W) -> (B, C)."""
        return grid.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)


def global_descriptor(grid: torch.Tensor, gem: GeM) -> torch.Tensor:
    """L2-normalise per position, GeM-pool, L2-normalise: the paper's global descriptor."""
    return F.normalize(gem(F.normalize(grid, dim=1)), dim=-1)
