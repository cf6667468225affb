# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The VPR model: one backbone plus one homography regressor, built from a small config."""
from __future__ import annotations

import torch
from torch import nn

from .backbones import Backbone, Features, create_backbone
from .homography_regressor import PRESETS, HomographyRegressor, RegressorConfig

DEFAULT_PRESET = {"cct14": "paper", "efficientnet_lite0": "light"}


class VPRModel(nn.Module):
    def __init__(self, backbone: Backbone, regressor: HomographyRegressor):
        super().__init__()
        if regressor.config.frame_size != backbone.input_size:
            raise ValueError(f"regressor frame {regressor.config.frame_size} != backbone input "
                             f"{backbone.input_size}")
        self.backbone = backbone
        self.regressor = regressor

    @property
    def config(self) -> dict:
        """What is needed to rebuild this architecture; stored in every checkpoint."""
        return {"backbone": self.backbone.name, "regressor": self.regressor.config.to_dict()}

    def embed(self, images: torch.Tensor) -> Features:
        """Normalised images (B, 3, S, S) -> local grids and global descriptors."""
        return self.backbone(images)

    def homographies(self, query_local: torch.Tensor, candidate_local: torch.Tensor,
                     chunk_size: int | None = None) -> torch.Tensor:
        """(C, H, W) or (K, C, H, W) query with (K, C, H, W) candidates -> (K, 3, 3)."""
        return self.regressor.homographies(query_local, candidate_local, chunk_size)


def build_model(backbone: str = "efficientnet_lite0", regressor: str | dict | RegressorConfig | None = None,
                pretrained: bool = True) -> VPRModel:
    """Build a model; ``regressor`` is a preset name, a config dict or None (backbone default)."""
    net = create_backbone(backbone)
    if regressor is None:
        regressor = DEFAULT_PRESET[backbone]
    if isinstance(regressor, str):
        if regressor not in PRESETS:
            raise ValueError(f"unknown regressor preset {regressor!r}; choose from {sorted(PRESETS)}")
        regressor = PRESETS[regressor]
    elif isinstance(regressor, dict):
        regressor = RegressorConfig.from_dict(regressor)
    if regressor.frame_size != net.input_size:
        regressor = RegressorConfig(**{**regressor.to_dict(), "frame_size": net.input_size})
    if pretrained:
        net.load_pretrained()
    return VPRModel(net, HomographyRegressor(regressor))
