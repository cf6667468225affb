# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The training and validation data of a run: geo-localisation pairs, or labelled synthetic
second views of photographs (a folder, a bag)."""
from __future__ import annotations

import fnmatch
from pathlib import Path

import numpy as np

from ..loop.groundtruth import geo_run
from ..map.sources import Frame, bag_frames, folder_frames, geo_split
from .config import TrainConfig
from .pairs import GeoPairs, WarpedPairs

__all__ = ["make_datasets"]


def _image_frames(cfg: TrainConfig) -> list[Frame]:
    frames = [f for folder in cfg.images for f in folder_frames(folder)]
    if cfg.exclude:
        frames = [f for f in frames if not any(fnmatch.fnmatch(Path(f.source).name, p) for p in cfg.exclude)]
        if not frames:
            raise ValueError(f"--exclude {cfg.exclude} leaves no images")
    return frames


def make_datasets(cfg: TrainConfig, size: int):
    """(train dataset, validation spec). Errors on empty or unlabelled data come from here,
    before any model is built."""
    if cfg.dataset:
        root = Path(cfg.dataset)
        train_q = folder_frames(geo_split(root / "train", "queries"), with_utm=True)
        train_db = folder_frames(geo_split(root / "train", "database"), with_utm=True)
        train = GeoPairs(train_q, train_db, size, cfg.positive_dist_train, cfg.positive_dist_val, cfg.seed)
        val = {"kind": "geo", "run": geo_run(root / "val", cfg.positive_dist_val)}
        return train, val
    if cfg.images:
        frames = _image_frames(cfg)
    elif cfg.bag:
        if not cfg.topic:
            raise ValueError("--bag needs --topic")
        frames = list(bag_frames(cfg.bag, cfg.topic))
        if not frames:
            raise ValueError(f"no decodable images on {cfg.topic} in {cfg.bag}")
    else:
        raise ValueError("give training data: --dataset (geo-localisation layout), --images or --bag")
    if cfg.max_samples:
        frames = frames[:cfg.max_samples]
    n_val = max(1, int(round(len(frames) * cfg.val_fraction))) if len(frames) > 1 else 0
    if len(frames) - n_val < 1:
        raise ValueError("need at least 2 images (training and validation)")
    # validation: every n-th image, so that each source folder is represented
    val_ids = set(np.linspace(0, len(frames) - 1, n_val).round().astype(int).tolist())
    recipe = cfg.recipe()
    train = WarpedPairs([f for i, f in enumerate(frames) if i not in val_ids], size, cfg.seed, cfg.band(0), recipe)
    val_pairs = WarpedPairs([frames[i] for i in sorted(val_ids)], size, cfg.seed + 1, (0.0, cfg.difficulty), recipe)
    return train, {"kind": "warped", "pairs": val_pairs}
