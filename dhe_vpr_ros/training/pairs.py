# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Training samples: (query, positive) pairs, and the negatives pool for triplet mining.

Two sources:

* ``WarpedPairs``: any images (a folder, a rosbag2 topic). The query is a synthetic second
  view of the photograph (``views``: camera motion and light), the positive a crop of it;
  the true homography is known, so the pair is labelled.
* ``GeoPairs``: a geo-localisation split (``queries/`` and ``database/`` with UTM in the
  names). The positive is the nearest database image within the positive distance.

Every random choice of a sample comes from a generator seeded with (seed, epoch, index), so
a sample does not depend on what ran before it: resuming mid-epoch, or splitting an epoch
over DDP ranks, sees exactly the same data.
"""
from __future__ import annotations

import logging

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..image_conversion import ImageConversionError
from ..map.sources import Frame
from .views import ViewRecipe, crop_to_frame, sample_motion, synthetic_view

__all__ = ["GeoPairs", "WarpedPairs", "load_photo", "load_square", "negatives_pool", "sample_rng"]

log = logging.getLogger(__name__)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def load_square(frame: Frame, size: int) -> np.ndarray:
    """The frame as RGB uint8 at the network's square input size."""
    return cv2.resize(frame.load(), (size, size), interpolation=cv2.INTER_AREA)


def load_photo(frame: Frame, max_side: int = 512) -> np.ndarray:
    """The frame as RGB uint8, shrunk so that its longer side is at most ``max_side`` (synthetic
    views are cut from it, so it keeps its aspect and some resolution to spare)."""
    image = frame.load()
    scale = max_side / max(image.shape[:2])
    if scale < 1.0:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return image


def _readable(frames: list[Frame]) -> tuple[list[Frame], list[np.ndarray]]:
    """(frames, photos) of the frames that load; the others are logged and left out."""
    kept, photos = [], []
    for frame in frames:
        try:
            photos.append(load_photo(frame))
        except (ImageConversionError, OSError) as exc:
            log.warning("training: skipped %s: %s", frame.source, exc)
            continue
        kept.append(frame)
    return kept, photos


class WarpedPairs(Dataset):
    """Labelled pairs from unlabelled photographs: synthetic second views (``views``).

    Sample ``i`` pairs photo ``i``'s map view (a crop fixed per photo, so a frozen backbone
    embeds it once) with a query view whose camera motion and light come from
    ``sample_rng(seed, epoch, i)`` at difficulty ``band``; another photo of the set fills
    what the query camera sees beyond it. ``h_true`` maps query -> positive pixels.
    """

    def __init__(self, frames: list[Frame], size: int, seed: int = 0, band: tuple[float, float] = (0.0, 1.0),
                 recipe: ViewRecipe = ViewRecipe(), light: bool = True, cache: bool = True):
        self.size, self.seed = size, seed
        self.band, self.recipe, self.light = band, recipe, light
        self.epoch = 0
        self.labels_only = False  # the trainer has every view's features cached: skip the images
        self._cache = None
        if cache:
            frames, self._cache = _readable(frames)
        if not frames:
            raise ValueError("no training images")
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def photo(self, index: int) -> np.ndarray:
        return self._cache[index] if self._cache is not None else load_photo(self.frames[index])

    def map_crop(self, index: int) -> np.ndarray:
        """(3, 3) photo -> map-view pixels; the same for every epoch."""
        return crop_to_frame(np.random.default_rng([self.seed, index, 7]), self.photo(index).shape,
                             self.size, self.recipe.crop)

    def __getitem__(self, index: int) -> dict:
        rng = sample_rng(self.seed, self.epoch, index)
        other = int(rng.integers(len(self))) if len(self) > 1 else index
        if self.labels_only:  # the same draws as synthetic_view makes first: the same label
            h_true = np.linalg.inv(sample_motion(rng, self.size, self.band, self.recipe))
            empty = torch.zeros((0, 0, 3), dtype=torch.uint8)
            return {"query": empty, "positive": empty, "h_true": torch.from_numpy(h_true / h_true[2, 2]).float(),
                    "index": index}
        view = synthetic_view(rng, self.photo(index), self.size, self.band,
                              self.photo(other) if other != index else None, self.recipe, self.light,
                              to_map=self.map_crop(index))
        return {"query": torch.from_numpy(view.query), "positive": torch.from_numpy(view.positive),
                "h_true": torch.from_numpy(view.h_true).float(), "index": index}


class GeoPairs(Dataset):
    """Labelled pairs from UTM: each query with its nearest database image within range."""

    def __init__(self, queries: list[Frame], database: list[Frame], size: int,
                 positive_m: float = 10.0, negative_m: float = 25.0, seed: int = 0):
        self.size, self.seed, self.epoch = size, seed, 0
        db_utm = np.array([f.utm for f in database], np.float64)
        q_utm = np.array([f.utm for f in queries], np.float64)
        dist = np.linalg.norm(q_utm[:, None] - db_utm[None], axis=-1)
        keep = [i for i in range(len(queries)) if dist[i].min() <= positive_m]
        if len(keep) < len(queries):
            log.warning("%d of %d training queries have no database image within %.0f m; left out",
                        len(queries) - len(keep), len(queries), positive_m)
        if not keep:
            raise ValueError(f"no training query has a database image within {positive_m} m")
        self.queries = [queries[i] for i in keep]
        self.database = database
        self.positive = [int(dist[i].argmin()) for i in keep]
        # places a query must not be pushed away from: everything within the negative range
        self.not_negative = [np.flatnonzero(dist[i] <= negative_m) for i in keep]

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, index: int) -> dict:
        return {"query": torch.from_numpy(load_square(self.queries[index], self.size)),
                "positive": torch.from_numpy(load_square(self.database[self.positive[index]], self.size)),
                "h_true": torch.full((3, 3), float("nan")), "index": index}


def negatives_pool(dataset: Dataset) -> tuple[list, list[np.ndarray]]:
    """(images that can serve as negatives, per-sample ids in that pool that must not).

    Warped pairs: every other image is a negative (each image is taken to be its own place).
    Geo pairs: database images beyond the negative range of the query.
    """
    if isinstance(dataset, GeoPairs):
        return dataset.database, dataset.not_negative
    return dataset.frames, [np.array([i]) for i in range(len(dataset))]
