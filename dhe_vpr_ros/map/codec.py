# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""How a map stores its places' local grids: float16 as embedded (format 1, 129 KB a place for
112 x 24 x 24), or compact (format 2, ``pca-int4``: 27.8 KB a place, 4.6x smaller).

Compact: each cell's descriptor (C values, unit length) is projected on the ``dims`` directions
that carry most of the map's own descriptors (the leading eigenvectors of their second moment,
fitted once when the map is first written and kept with it), quantised to 4 bits with one scale
per place and direction, and stored as one row per place: ``dims`` float16 scales, then the codes
two to a byte. Reading a row projects back and renormalises each cell. Measured on the real sets
(doc/maps.md): Recall@1 within 1 point of float16 on every one, where 32 or 48 directions at 8
bits, or 4 bits without the projection, lost up to 4.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["CODECS", "COMPACT", "DEFAULT_GRIDS", "FLOAT16", "GridCodec", "fit_projection"]

FLOAT16, COMPACT = "float16", "pca-int4"
CODECS = (FLOAT16, COMPACT)
DEFAULT_GRIDS = COMPACT  # what build-map writes unless told otherwise (doc/maps.md: the table it was chosen by)
SAMPLE_VECTORS = 200_000  # cell descriptors the projection is fitted on, at most
LEVELS = 7  # 4-bit signed codes: -7 .. 7


@dataclass(frozen=True)
class GridCodec:
    """``name``: float16 or pca-int4; ``projection``: (dims, C) float32 rows (pca-int4 only)."""

    name: str = FLOAT16
    dims: int = 96
    projection: np.ndarray | None = field(default=None, compare=False)

    def same_as(self, other: "GridCodec") -> bool:
        """Whether rows this codec wrote decode alike with ``other`` (the same projection)."""
        if (self.name, self.dims if self.compact else 0) != (other.name, other.dims if other.compact else 0):
            return False
        return not self.compact or (self.projection is not None and other.projection is not None
                                    and np.array_equal(self.projection, other.projection))

    @property
    def compact(self) -> bool:
        return self.name == COMPACT

    def __post_init__(self):
        if self.name not in CODECS:
            raise ValueError(f"unknown grid codec {self.name!r}; choose {' or '.join(CODECS)}")

    def row_bytes(self, local_shape: tuple[int, int, int]) -> int:
        """Bytes one place's grid takes on disk."""
        c, h, w = local_shape
        return c * h * w * 2 if not self.compact else self.dims * 2 + (self.dims * h * w + 1) // 2

    def fitted(self, sample: np.ndarray) -> "GridCodec":
        """This codec with its projection fitted on ``sample`` (N, C, H, W) grids (float16: itself)."""
        if not self.compact or self.projection is not None:
            return self
        return GridCodec(self.name, self.dims, fit_projection(sample, self.dims))

    def encode(self, grids: np.ndarray) -> np.ndarray:
        """(N, C, H, W) grids -> (N, row_bytes) uint8 rows."""
        grids = np.asarray(grids)
        if not self.compact:
            return np.ascontiguousarray(grids, dtype=np.float16).reshape(len(grids), -1).view(np.uint8)
        n, c, h, w = grids.shape
        z = _apply(self.projection, grids.astype(np.float32).reshape(n, c, h * w))  # (N, dims, cells)
        scales = (np.abs(z).max(axis=2) / LEVELS).astype(np.float16)
        safe = np.where(scales > 0, scales.astype(np.float32), 1.0)[..., None]
        codes = (np.clip(np.rint(z / safe), -LEVELS, LEVELS).astype(np.int8) + 8).astype(np.uint8).reshape(n, -1)
        if codes.shape[1] % 2:
            codes = np.pad(codes, ((0, 0), (0, 1)), constant_values=8)
        packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
        return np.concatenate([scales.view(np.uint8).reshape(n, -1), packed], axis=1)

    def decode(self, rows: np.ndarray, local_shape: tuple[int, int, int]) -> np.ndarray:
        """(N, row_bytes) uint8 rows -> (N, C, H, W) float16 grids, each cell of unit length."""
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
        n = len(rows)
        if not self.compact:
            return rows.view(np.float16).reshape(n, *local_shape)
        c, h, w = local_shape
        d, cells = self.dims, h * w
        scales = rows[:, :2 * d].copy().view(np.float16).astype(np.float32)
        packed = rows[:, 2 * d:]
        codes = np.empty((n, packed.shape[1] * 2), np.int8)
        codes[:, 0::2] = (packed & 0x0F).astype(np.int8) - 8
        codes[:, 1::2] = (packed >> 4).astype(np.int8) - 8
        # (dims, N * cells) in one piece: one matrix product projects every cell back; the rows of
        # the projection are orthonormal, so a cell has the length of its code: normalise the codes
        z = codes[:, :d * cells].reshape(n, d, cells).transpose(1, 0, 2).astype(np.float32) * scales.T[..., None]
        z *= 1.0 / (np.sqrt(np.einsum("dnp,dnp->np", z, z)) + 1e-12)
        x = self.projection.T @ z.reshape(d, n * cells)  # (C, N * cells)
        return x.reshape(c, n, h, w).transpose(1, 0, 2, 3).astype(np.float16, order="C")

    def to_dict(self) -> dict:
        return {"codec": self.name, **({"dims": self.dims} if self.compact else {})}


def _apply(matrix: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``matrix`` (A, B) times every (B, P) slice of ``x`` (N, B, P), as ONE matrix product: numpy's
    broadcast matmul calls BLAS per slice and was 60x slower here."""
    n, b, cells = x.shape
    out = matrix @ np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(b, n * cells)
    return np.ascontiguousarray(out.reshape(matrix.shape[0], n, cells).transpose(1, 0, 2))


def fit_projection(grids: np.ndarray, dims: int, seed: int = 0) -> np.ndarray:
    """(dims, C): the leading eigenvectors of the second moment of the grids' cell descriptors
    (uncentred: dot products between unit descriptors are what matching uses)."""
    grids = np.asarray(grids)
    x = grids.astype(np.float32).transpose(0, 2, 3, 1).reshape(-1, grids.shape[1])
    if len(x) > SAMPLE_VECTORS:
        x = x[np.random.default_rng(seed).choice(len(x), SAMPLE_VECTORS, replace=False)]
    if not len(x) or dims > x.shape[1]:
        raise ValueError(f"cannot fit {dims} directions on {len(x)} descriptors of {x.shape[1]} values")
    _, vectors = np.linalg.eigh(x.T @ x / len(x))
    return np.ascontiguousarray(vectors[:, ::-1][:, :dims].T, dtype=np.float32)
