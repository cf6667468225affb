"""The map database: a directory of places with global descriptors and local feature grids.

Layout of ``MAP/``::

    manifest.json   format, version, model identity (backbone, checkpoint hash, input size),
                    feature shapes, number of places, index type
    global.faiss    FAISS index of L2-normalised global descriptors (inner product);
                    the FAISS row is the place id
    local.f16       float16 (N, C, H, W) local grids, raw (memory-mappable; np.memmap reads
                    it): a query reads only the K candidates' rows, so a large map does not
                    have to fit in RAM
    places.jsonl    one JSON object per place: place_id, source, timestamp_ns, pose, utm

Writes never corrupt a map: a new version is written into a temporary sibling directory,
fsynced, and swapped in atomically (``renameat2(RENAME_EXCHANGE)`` on Linux). Loading checks
everything it can and raises ``MapError`` naming the problem instead of returning wrong matches.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from .atomic import fsync_directory

FORMAT = "dhe_vpr_ros.map"
VERSION = 1
MANIFEST, GLOBAL_INDEX, LOCAL_GRIDS, PLACES = "manifest.json", "global.faiss", "local.f16", "places.jsonl"


class MapError(RuntimeError):
    """A map is missing, corrupt, of a newer format, or built with another model."""


@dataclass(frozen=True)
class ModelIdentity:
    """What must match between a map and the model that queries it.

    ``weights_sha256`` hashes the backbone's weights, not the checkpoint file: the stored
    features depend only on them, so a checkpoint that retrains just the homography regressor
    can query a map built before it, while any change to the backbone is caught.
    """

    backbone: str
    weights_sha256: str
    input_size: int
    local_shape: tuple[int, int, int]  # (C, H, W)
    global_dim: int

    def to_dict(self) -> dict:
        return {"backbone": self.backbone, "weights_sha256": self.weights_sha256,
                "input_size": self.input_size, "local_shape": list(self.local_shape),
                "global_dim": self.global_dim}

    @classmethod
    def from_dict(cls, data: dict) -> "ModelIdentity":
        return cls(data["backbone"], data["weights_sha256"], int(data["input_size"]),
                   tuple(int(v) for v in data["local_shape"]), int(data["global_dim"]))


@dataclass
class Place:
    """Metadata of one map place. ``pose``: {frame_id, position [x,y,z], orientation [x,y,z,w]};
    ``image_size``: (width, height) of the original image, so homographies come out in its pixels."""

    place_id: int
    source: str = ""
    timestamp_ns: int | None = None
    pose: dict | None = None
    utm: tuple[float, float] | None = None
    image_size: tuple[int, int] | None = None

    def to_dict(self) -> dict:
        return {"place_id": self.place_id, "source": self.source, "timestamp_ns": self.timestamp_ns,
                "pose": self.pose, "utm": list(self.utm) if self.utm is not None else None,
                "image_size": list(self.image_size) if self.image_size is not None else None}

    @classmethod
    def from_dict(cls, data: dict) -> "Place":
        utm, size = data.get("utm"), data.get("image_size")
        return cls(int(data["place_id"]), data.get("source", ""), data.get("timestamp_ns"),
                   data.get("pose"), tuple(utm) if utm is not None else None,
                   tuple(size) if size is not None else None)


def _make_index(dim: int, index_type: str):
    if index_type == "flat":
        return faiss.IndexFlatIP(dim)
    if index_type == "hnsw":
        return faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    raise ValueError(f"unknown index type {index_type!r}; choose 'flat' (exact) or 'hnsw' (approximate)")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if not hasattr(libc, "renameat2"):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _read_rows(fd: int, index: np.ndarray, row_shape: tuple[int, int, int]) -> np.ndarray:
    """Rows ``index`` of a raw float16 (N, *row_shape) file, one pread each.

    pread rather than a memory map: reading K rows then costs K rows of I/O and no more,
    whereas mapped pages are counted in the process's resident memory (the kernel maps file
    pages in 2 MB folios) and a long-running node would appear to grow without bound.
    """
    row_bytes = int(np.prod(row_shape)) * 2
    out = np.empty((len(index), *row_shape), dtype=np.float16)
    view = out.reshape(len(index), -1).view(np.uint8)
    for j, row in enumerate(np.asarray(index, dtype=np.int64)):
        got = os.preadv(fd, [view[j]], int(row) * row_bytes)
        if got != row_bytes:
            raise MapError(f"short read of map row {row} ({got} of {row_bytes} bytes): file truncated?")
    return out


class _GridFile:
    """Read-only access to the stored local grids (local.f16)."""

    def __init__(self, path: Path, count: int, row_shape: tuple[int, int, int]):
        self.path, self.count, self.row_shape = Path(path), count, row_shape
        self.fd = os.open(path, os.O_RDONLY)

    def rows(self, index: np.ndarray) -> np.ndarray:
        return _read_rows(self.fd, index, self.row_shape)

    def __del__(self):
        with contextlib.suppress(Exception):
            os.close(self.fd)


class _SpillFile:
    """Grids added since the map was opened, appended to an unlinked-on-close temp file, so
    building a large map needs disk, not RAM. Rows are read back with pread."""

    def __init__(self, shape: tuple[int, int, int], directory: str | None):
        self.row_shape = shape
        fd, self.path = tempfile.mkstemp(prefix=".grids-", suffix=".spill", dir=directory)
        self.handle = os.fdopen(fd, "w+b")
        self.count = 0

    def append(self, grids: np.ndarray) -> None:
        self.handle.write(np.ascontiguousarray(grids, dtype=np.float16).tobytes())
        self.handle.flush()
        self.count += grids.shape[0]

    def rows(self, index: np.ndarray) -> np.ndarray:
        return _read_rows(self.handle.fileno(), index, self.row_shape)

    def link_to(self, path: Path) -> bool:
        """Give the spilled rows a second name (no copy; the spill name goes on close()).
        False where a hard link is impossible (another filesystem), then the caller copies."""
        self.handle.flush()
        try:
            os.link(self.path, path)
        except OSError:
            return False
        return True

    def close(self) -> None:
        self.handle.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()


@dataclass
class MapDatabase:
    """An opened (or in-memory, growing) map. Place ids are rows: 0..N-1, stable on append."""

    identity: ModelIdentity
    index_type: str = "flat"
    places: list[Place] = field(default_factory=list)
    build_info: dict = field(default_factory=dict)  # e.g. the checkpoint path and file hash
    _index: object = None
    _local: _GridFile | None = None  # the stored grids when opened from disk
    spill_dir: str | None = None  # where grids added since opening wait (default: system temp)
    _spill: "_SpillFile | None" = None

    def __post_init__(self):
        if self._index is None:
            self._index = _make_index(self.identity.global_dim, self.index_type)

    # -- content ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.places)

    def add(self, global_descriptors: np.ndarray, local_grids: np.ndarray, places: list[Place] | None = None) -> list[int]:
        """Append places in memory; returns their ids. Descriptors (N, D) are re-normalised."""
        g = np.ascontiguousarray(global_descriptors, dtype=np.float32).reshape(-1, self.identity.global_dim)
        loc = np.asarray(local_grids)
        if loc.shape[1:] != self.identity.local_shape or loc.shape[0] != g.shape[0]:
            raise MapError(f"local grids of shape {loc.shape} do not fit this map "
                           f"({g.shape[0]} x {self.identity.local_shape})")
        faiss.normalize_L2(g)
        first = len(self.places)
        ids = list(range(first, first + g.shape[0]))
        places = places or [Place(i) for i in ids]
        for pid, place in zip(ids, places):
            place.place_id = pid
        self._index.add(g)
        if self._spill is None:
            self._spill = _SpillFile(self.identity.local_shape, self.spill_dir)
        self._spill.append(loc)
        self.places.extend(places)
        return ids

    def search(self, queries: np.ndarray, k: int,
               exclude_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product of L2-normalised descriptors: (similarities (Q, k), ids (Q, k)).

        ``exclude_ids`` are skipped inside FAISS (e.g. places too recent to count as a loop);
        rows are padded with id -1 when fewer than k places are eligible.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.identity.global_dim)
        faiss.normalize_L2(q)
        k = min(k, len(self))
        if k == 0:
            return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
        if exclude_ids is None or len(exclude_ids) == 0:
            return self._index.search(q, k)
        excluded = np.ascontiguousarray(exclude_ids, dtype=np.int64)
        selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(len(excluded), faiss.swig_ptr(excluded)))
        params = (faiss.SearchParametersHNSW(sel=selector) if self.index_type == "hnsw"
                  else faiss.SearchParameters(sel=selector))
        return self._index.search(q, k, params=params)

    def timestamps_ns(self) -> np.ndarray:
        """(N,) place stamps in ns, -1 where unknown (for time-gap filtering)."""
        return np.array([p.timestamp_ns if p.timestamp_ns is not None else -1 for p in self.places],
                        dtype=np.int64)

    def local_features(self, ids) -> np.ndarray:
        """float16 (K, C, H, W) grids of the given places; reads only those rows."""
        ids = np.asarray(ids, dtype=np.int64)
        stored = 0 if self._local is None else self._local.count
        out = np.empty((len(ids), *self.identity.local_shape), dtype=np.float16)
        on_disk = ids < stored
        if on_disk.any():
            out[on_disk] = self._local.rows(ids[on_disk])
        if not on_disk.all():
            out[~on_disk] = self._spill.rows(ids[~on_disk] - stored)
        return out

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the whole map to ``path`` atomically (a crash leaves the previous map intact)."""
        target = Path(path).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            faiss.write_index(self._index, str(tmp / GLOBAL_INDEX))
            # a new map: the spilled grids already are the file; otherwise copy old + new rows
            if not (self._local is None and self._spill is not None and self._spill.link_to(tmp / LOCAL_GRIDS)):
                self._write_local(tmp / LOCAL_GRIDS)
            with open(tmp / PLACES, "w") as handle:
                for place in self.places:
                    handle.write(json.dumps(place.to_dict()) + "\n")
            manifest = {"format": FORMAT, "version": VERSION, "model": self.identity.to_dict(),
                        "num_places": len(self), "index": self.index_type, "build": self.build_info}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
            for name in (GLOBAL_INDEX, LOCAL_GRIDS, PLACES, MANIFEST):
                _fsync_file(tmp / name)
            fsync_directory(tmp)
            if target.exists():
                if not _exchange(tmp, target):
                    old = target.with_name(f".{target.name}.old-{os.getpid()}")
                    os.replace(target, old)
                    os.replace(tmp, target)
                    tmp = old
                fsync_directory(target.parent)
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.replace(tmp, target)
                fsync_directory(target.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # from now on this object reads the saved files, and spilled rows are released
        self._local = _GridFile(target / LOCAL_GRIDS, len(self), self.identity.local_shape) if len(self) else None
        if self._spill is not None:
            self._spill.close()
            self._spill = None

    def _write_local(self, path: Path) -> None:
        with open(path, "wb") as out:
            for start in range(0, len(self), 256):
                out.write(self.local_features(np.arange(start, min(start + 256, len(self)))).tobytes())

    @classmethod
    def open(cls, path: str | os.PathLike, expect: ModelIdentity | None = None) -> "MapDatabase":
        """Open a map read-only (local grids memory-mapped), checking it against ``expect``."""
        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise MapError(f"no map at {path}: {MANIFEST} is missing (build one with build-map)")
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise MapError(f"map manifest {path / MANIFEST} is unreadable: {exc}") from exc
        if manifest.get("format") != FORMAT:
            raise MapError(f"{path} is not a dhe_vpr_ros map (format {manifest.get('format')!r})")
        if int(manifest.get("version", 0)) > VERSION:
            raise MapError(f"map {path} has format version {manifest['version']}, newer than this "
                           f"dhe_vpr_ros supports ({VERSION}); upgrade the package")
        identity = ModelIdentity.from_dict(manifest["model"])
        if expect is not None and identity != expect:
            diffs = [f"{k}: map {v!r} vs model {expect.to_dict()[k]!r}"
                     for k, v in identity.to_dict().items() if v != expect.to_dict()[k]]
            built_with = manifest.get("build", {}).get("checkpoint") or "ImageNet backbone, no checkpoint"
            raise MapError(f"map {path} was built with another model ({'; '.join(diffs)}); "
                           f"rebuild the map or load the checkpoint it was built with ({built_with})")
        num = int(manifest["num_places"])
        if not (path / GLOBAL_INDEX).is_file():
            raise MapError(f"map {path} is missing its global index {GLOBAL_INDEX}")
        try:
            index = faiss.read_index(str(path / GLOBAL_INDEX))
        except RuntimeError as exc:
            raise MapError(f"map {path}: global index is corrupt ({str(exc).splitlines()[0]})") from exc
        if index.ntotal != num or index.d != identity.global_dim:
            raise MapError(f"map {path}: global index holds {index.ntotal} x {index.d}, manifest says "
                           f"{num} x {identity.global_dim}")
        expected_bytes = num * int(np.prod(identity.local_shape)) * 2
        local_file = path / LOCAL_GRIDS
        actual = local_file.stat().st_size if local_file.is_file() else -1
        if actual != expected_bytes:
            raise MapError(f"map {path}: {LOCAL_GRIDS} has {max(actual, 0)} bytes, expected "
                           f"{expected_bytes} for {num} places (truncated or missing file)")
        try:
            places = [Place.from_dict(json.loads(line)) for line in (path / PLACES).read_text().splitlines() if line]
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise MapError(f"map {path}: place metadata {PLACES} is unreadable ({exc})") from exc
        if len(places) != num:
            raise MapError(f"map {path}: {len(places)} place records for {num} places")
        local = _GridFile(local_file, num, identity.local_shape) if num else None
        return cls(identity, manifest.get("index", "flat"), places, dict(manifest.get("build", {})),
                   index, local)
