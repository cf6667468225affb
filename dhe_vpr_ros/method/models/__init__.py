# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Networks: backbones, GeM pooling, the DHE homography regressor, and checkpoints."""
from .backbones import BACKBONES, Backbone, Features, create_backbone
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .homography_regressor import PRESETS, HomographyRegressor, RegressorConfig, correlation_volume
from .vpr_model import VPRModel, build_model

__all__ = [
    "BACKBONES", "Backbone", "CheckpointError", "Features", "HomographyRegressor", "PRESETS",
    "RegressorConfig", "VPRModel", "build_model", "correlation_volume", "create_backbone",
    "load_checkpoint", "save_checkpoint",
]
