# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Every setting of a training run (what ``config.json`` holds), and the views' difficulty per epoch."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields

from .views import ViewRecipe

__all__ = ["BOUNDS", "STAGES", "SCHEDULES", "TrainConfig", "UNFREEZE_FROM"]

log = logging.getLogger(__name__)

UNFREEZE_FROM = {"cct14": 6, "efficientnet_lite0": 8}  # paper: CCT blocks 0..5 stay frozen
STAGES, SCHEDULES = ("dhe", "joint"), ("none", "cosine")
# Every number of a run, with its range: (whole number?, lowest, highest, lowest excluded?); the command's
# options and a resumed run's config.json are checked against the same table.
BOUNDS = {
    "epochs": (True, 1, 1_000_000, False), "batch_size": (True, 1, 4096, False), "lr": (False, 0.0, 1.0, True),
    "clip_grad": (False, 0.0, 1e9, False), "margin": (False, 0.0, 10.0, False), "negatives": (True, 1, 100, False),
    "mining_pool": (True, 1, 10_000_000, False), "cache_refresh": (True, 1, 10_000_000, False),
    "supervised_weight": (False, 0.0, 1e6, False), "robust_px": (False, 0.0, 1e6, False),
    "rei_weight": (False, 0.0, 1e6, False), "warp_repeats": (True, 1, 100_000, False),
    "difficulty": (False, 0.0, 1.0, False), "curriculum_epochs": (True, 0, 1_000_000, False),
    "curriculum_start": (False, 0.0, 1.0, False), "unfreeze_from": (True, 0, 1000, False),
    "positive_dist_train": (False, 0.0, 1e6, True), "positive_dist_val": (False, 0.0, 1e6, True),
    "val_fraction": (False, 0.0, 0.9, False), "val_top_k": (True, 1, 1000, False),
    "val_every": (True, 1, 1_000_000, False), "max_samples": (True, 1, 1 << 40, False),
    "seed": (True, 0, 2 ** 32 - 1, False), "workers": (True, 0, 256, False),
}


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
    def from_dict(cls, data, source: str = "config.json") -> "TrainConfig":
        """A config from config.json (``source`` names it), ignoring (and naming) settings this version no
        longer has; ValueError naming ``source`` and the field for anything of the wrong type or range."""
        if not isinstance(data, dict):
            raise ValueError(f"{source} holds a {type(data).__name__}, not the settings of a run")
        known = {f.name for f in fields(cls)}
        dropped = sorted(set(data) - known)
        if dropped:
            log.warning("%s: ignoring settings this version does not have: %s", source, ", ".join(dropped))
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("images"), str):  # before 0.2: one folder
            values["images"] = [values["images"]]
        config = cls(**{"out": "", **values})
        config.check(source)
        return config

    def check(self, source: str = "the run's settings") -> None:
        """ValueError naming ``source`` and the field when a setting has the wrong type or is out of range."""
        for name, (whole, low, high, above) in BOUNDS.items():
            value = getattr(self, name)
            if value is None and name in ("warp_repeats", "unfreeze_from", "max_samples"):
                continue
            kind_ok = isinstance(value, int) if whole else isinstance(value, (int, float))
            if isinstance(value, bool) or not kind_ok or not math.isfinite(value) or \
                    not (low < value if above else low <= value) or value > high:
                kind = "a whole number" if whole else "a number"
                raise ValueError(f"{source}: field {name!r} is {value!r}, not {kind} from {low:g} "
                                 f"({'excluded' if above else 'included'}) to {high:g}")
        for name, allowed in (("stage", STAGES), ("lr_schedule", SCHEDULES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{source}: field {name!r} is {getattr(self, name)!r}, not one of "
                                 f"{', '.join(allowed)}")
        for name in ("out", "backbone", "device"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{source}: field {name!r} is {getattr(self, name)!r}, not text")
        images = self.images
        if images is not None and not (isinstance(images, list) and all(isinstance(i, str) for i in images)):
            raise ValueError(f"{source}: field 'images' is {self.images!r}, not a list of folders")
        if not isinstance(self.views, dict):
            raise ValueError(f"{source}: field 'views' is {self.views!r}, not the views' settings (an object)")
        try:
            self.recipe()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: field 'views': {exc}") from None

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
