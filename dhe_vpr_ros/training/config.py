# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Every setting of a training run (what ``config.json`` holds), and the views' difficulty per epoch."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields

from .views import ViewRecipe

__all__ = ["TrainConfig", "UNFREEZE_FROM"]

log = logging.getLogger(__name__)

UNFREEZE_FROM = {"cct14": 6, "efficientnet_lite0": 8}  # paper: CCT blocks 0..5 stay frozen


@dataclass
class TrainConfig:
    out: str
    stage: str = "dhe"
    dataset: str | None = None
    images: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    bag: str | None = None
    topic: str | None = None
    backbone: str = "efficientnet_lite0"
    regressor: str | None = None
    init_checkpoint: str | None = None
    epochs: int = 5
    batch_size: int = 4
    lr: float = 1e-5
    lr_schedule: str = "none"
    clip_grad: float = 10.0
    margin: float = 0.1
    negatives: int = 2
    mining_pool: int = 1000
    cache_refresh: int = 1000
    supervised_weight: float = 1.0
    robust_px: float = 64.0
    rei_weight: float = 1.0
    warp_repeats: int | None = None
    difficulty: float = 1.0
    curriculum_epochs: int = 0
    curriculum_start: float = 0.25
    views: dict = field(default_factory=lambda: ViewRecipe().to_dict())
    unfreeze_from: int | None = None
    positive_dist_train: float = 10.0
    positive_dist_val: float = 25.0
    val_fraction: float = 0.1
    val_top_k: int = 10
    val_every: int = 1
    max_samples: int | None = None
    seed: int = 0
    device: str = "cpu"
    amp: bool = True
    workers: int = 0
    tensorboard: bool = True
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """A config from config.json, ignoring (and naming) settings this version no longer has."""
        known = {f.name for f in fields(cls)}
        dropped = sorted(set(data) - known)
        if dropped:
            log.warning("config.json: ignoring settings this version does not have: %s", ", ".join(dropped))
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("images"), str):  # before 0.2: one folder
            values["images"] = [values["images"]]
        return cls(**values)

    def recipe(self) -> ViewRecipe:
        views = dict(self.views)
        views["crop"] = tuple(views.get("crop", ViewRecipe().crop))
        return ViewRecipe(**views)

    def band(self, epoch: int) -> tuple[float, float]:
        """The difficulty band of an epoch's views: its top grows linearly from
        ``curriculum_start`` to ``difficulty`` over ``curriculum_epochs``."""
        if self.curriculum_epochs <= 0:
            return (0.0, self.difficulty)
        progress = min(1.0, epoch / self.curriculum_epochs)
        start = min(self.curriculum_start, self.difficulty)
        return (0.0, start + (self.difficulty - start) * progress)
