# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Training: the trainer (stages dhe and joint, resumable, DDP), its losses, labelled synthetic
views of photographs, training pairs, validation, and the run's checkpoints and logs."""
from .config import TrainConfig
from .losses import corner_loss, rei_loss, triplet_loss
from .trainer import Trainer, train
from .views import ViewRecipe, synthetic_view

__all__ = ["TrainConfig", "Trainer", "ViewRecipe", "corner_loss", "rei_loss", "synthetic_view", "train",
           "triplet_loss"]
