"""Training samples: (query, positive) pairs, and the negatives pool for triplet mining.

Two sources:

* ``WarpedPairs``: any images (a folder, a rosbag2 topic). The query is the image warped by
  a random homography with photometric changes; the positive is the image. The REI loss
  needs no labels, and since the true warp is known the corner error can be reported.
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

from .datasets import Frame

log = logging.getLogger(__name__)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def load_square(frame: Frame, size: int) -> np.ndarray:
    """The frame as RGB uint8 at the network's square input size."""
    return cv2.resize(frame.load(), (size, size), interpolation=cv2.INTER_AREA)


def random_warp(rng: np.random.Generator, size: int, max_shift: float) -> np.ndarray:
    """A homography moving each corner of a ``size`` square by up to ``max_shift * size``."""
    corners = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float32)
    moved = corners + rng.uniform(-max_shift, max_shift, (4, 2)).astype(np.float32) * size
    return cv2.getPerspectiveTransform(corners, moved).astype(np.float64)


def photometric(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Brightness, contrast, gamma and sensor noise: what changes between two visits."""
    x = image.astype(np.float32) / 255.0
    x = np.clip((x - 0.5) * rng.uniform(0.7, 1.3) + 0.5 + rng.uniform(-0.15, 0.15), 0, 1)
    x = x ** rng.uniform(0.7, 1.4)
    x = x + rng.normal(0, rng.uniform(0, 0.03), x.shape)
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


class WarpedPairs(Dataset):
    """Self-supervised pairs from unlabelled images; ``h_true`` maps query -> positive pixels."""

    def __init__(self, frames: list[Frame], size: int, seed: int = 0, max_shift: float = 0.2,
                 photometric_changes: bool = True, cache: bool = True):
        if not frames:
            raise ValueError("no training images")
        self.frames, self.size, self.seed = frames, size, seed
        self.max_shift, self.photometric_changes = max_shift, photometric_changes
        self.epoch = 0
        self._cache = [load_square(f, size) for f in frames] if cache else None

    def __len__(self) -> int:
        return len(self.frames)

    def image(self, index: int) -> np.ndarray:
        return self._cache[index] if self._cache is not None else load_square(self.frames[index], self.size)

    def __getitem__(self, index: int) -> dict:
        rng = sample_rng(self.seed, self.epoch, index)
        positive = self.image(index)
        warp = random_warp(rng, self.size, self.max_shift)  # positive -> query pixels
        query = cv2.warpPerspective(positive, warp, (self.size, self.size), borderMode=cv2.BORDER_REFLECT)
        if self.photometric_changes:
            query = photometric(rng, query)
        return {"query": torch.from_numpy(query), "positive": torch.from_numpy(positive.copy()),
                "h_true": torch.from_numpy(np.linalg.inv(warp)).float(), "index": index}


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
