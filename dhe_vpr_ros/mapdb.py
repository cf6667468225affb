# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The map database: a directory of places with global descriptors and local feature grids.

Layout of ``MAP/``::

    manifest.json   format, version, model identity (backbone, checkpoint hash, input size),
                    feature shapes, number of places, index type
    global.faiss    FAISS index of L2-normalised global descriptors (inner product);
                    the FAISS row is the place id
    local.f16       float16 (N, C, H, W) local grids, raw rows: a query reads only its K
                    candidates' rows (one pread each), so a large map never has to fit in RAM
    places.jsonl    one JSON object per place: place_id, source, timestamp_ns, pose, utm,
                    image_size
    cells.f64       float64 (C, H, W): the sum of every place's local grid, from which the
                    static-cell mask is learned (``static_mask.py``; absent in older maps)
    static_mask.png the mask drawn over one of the map's frames (for people; never read)

The manifest's ``mask`` field holds how the mask is made (threshold, the user's cells, ROI).

Writes never corrupt a map and never delete what is not a map: a new version is written into
a locked temporary sibling directory, fsynced, and swapped in atomically
(``renameat2(RENAME_EXCHANGE)`` on Linux); a target that exists and is not a map is refused.
Leftovers of a killed writer are removed on the next open or write. Loading checks every file
and field and raises ``MapError`` naming the file and the field instead of returning wrong
matches.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import faiss
import numpy as np

from .atomic import (LockTimeout, exchange, fsync_directory, link_unnamed, locked_tempdir, locked_tempfile,
                     release_writer_lock, remove_stale, try_writer_lock, umask_mode, unnamed_tempfile, writer_lock)
from .static_mask import CellMask, CellStatistics, MaskError, MaskSettings, mask_picture

__all__ = ["FORMAT", "MAP_FILES", "MapDatabase", "MapError", "ModelIdentity", "Place", "Pose", "check_place",
           "check_replaceable",
           "clean_leftovers", "is_map"]

log = logging.getLogger(__name__)

FORMAT = "dhe_vpr_ros.map"
VERSION = 1
MANIFEST, GLOBAL_INDEX, LOCAL_GRIDS, PLACES = "manifest.json", "global.faiss", "local.f16", "places.jsonl"
CELL_SUMS, MASK_PICTURE = "cells.f64", "static_mask.png"
MAP_FILES = (GLOBAL_INDEX, LOCAL_GRIDS, PLACES, MANIFEST)  # required; the two above are optional
ALL_MAP_FILES = (*MAP_FILES, CELL_SUMS, MASK_PICTURE)
INDEX_TYPES = ("flat", "hnsw")


class MapError(RuntimeError):
    """A map is missing, corrupt, of a newer format, or built with another model."""


def _field(data: dict, name: str, kind, optional: bool = False):
    """``data[name]`` checked against ``kind`` (a type or tuple of types); ValueError naming
    the field otherwise. bool is not an int here, whatever Python says."""
    if name not in data:
        if optional:
            return None
        raise ValueError(f"field {name!r} is missing")
    value = data[name]
    if value is None and optional:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ValueError(f"field {name!r} is {value!r}, not {names}")
    return value


def _numbers(data: dict, name: str, count: int, optional: bool = True, kind=(int, float)) -> tuple | None:
    value = _field(data, name, list, optional)
    if value is None:
        return None
    if len(value) != count or any(isinstance(v, bool) or not isinstance(v, kind) for v in value):
        raise ValueError(f"field {name!r} is {value!r}, not {count} numbers")
    if not all(math.isfinite(v) for v in value):
        raise ValueError(f"field {name!r} is {value!r}: not finite")
    return tuple(value)


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
    def from_dict(cls, data) -> "ModelIdentity":
        """ValueError naming the field for anything that is not a model identity."""
        if not isinstance(data, dict):
            raise ValueError(f"is {type(data).__name__}, not an object")
        shape = _numbers(data, "local_shape", 3, optional=False, kind=int)
        dims = {"input_size": _field(data, "input_size", int), "global_dim": _field(data, "global_dim", int)}
        for name, value in {**dims, "local_shape": min(shape)}.items():
            if not 0 < value <= 65536:
                raise ValueError(f"field {name!r} is out of range ({data[name]!r})")
        return cls(_field(data, "backbone", str), _field(data, "weights_sha256", str), dims["input_size"],
                   shape, dims["global_dim"])


@dataclass(frozen=True)
class Pose:
    """Where a place was seen from: ``position`` (x, y, z) in metres, ``orientation`` as a
    quaternion (x, y, z, w), in ``frame_id``."""

    frame_id: str
    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)

    def to_dict(self) -> dict:
        return {"frame_id": self.frame_id, "position": list(self.position), "orientation": list(self.orientation)}

    @classmethod
    def from_dict(cls, data) -> "Pose":
        if not isinstance(data, dict):
            raise ValueError(f"field 'pose' is {data!r}, not an object")
        return cls(_field(data, "frame_id", str), _numbers(data, "position", 3, optional=False),
                   _numbers(data, "orientation", 4, optional=False))


@dataclass
class Place:
    """Metadata of one map place. ``image_size``: (width, height) of the original image, so
    homographies come out in its pixels."""

    place_id: int
    source: str = ""
    timestamp_ns: int | None = None
    pose: Pose | None = None
    utm: tuple[float, float] | None = None
    image_size: tuple[int, int] | None = None

    def to_dict(self) -> dict:
        return {"place_id": self.place_id, "source": self.source, "timestamp_ns": self.timestamp_ns,
                "pose": self.pose.to_dict() if self.pose is not None else None,
                "utm": list(self.utm) if self.utm is not None else None,
                "image_size": list(self.image_size) if self.image_size is not None else None}

    @classmethod
    def from_dict(cls, data) -> "Place":
        """ValueError naming the field for anything that is not a place record."""
        if not isinstance(data, dict):
            raise ValueError(f"is {type(data).__name__}, not an object")
        size = _numbers(data, "image_size", 2, kind=int)
        if size is not None and min(size) <= 0:
            raise ValueError(f"field 'image_size' is {list(size)}, not a positive width and height")
        pose = data.get("pose")
        return cls(_field(data, "place_id", int), _field(data, "source", str, optional=True) or "",
                   _field(data, "timestamp_ns", int, optional=True),
                   Pose.from_dict(pose) if pose is not None else None, _numbers(data, "utm", 2), size)


def check_place(place: Place) -> None:
    """ValueError naming the field when ``place`` would not be read back (the rules of reading)."""
    Place.from_dict(json.loads(json.dumps(place.to_dict())))


def _make_index(dim: int, index_type: str):
    if index_type == "flat":
        return faiss.IndexFlatIP(dim)
    if index_type == "hnsw":
        return faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    raise ValueError(f"unknown index type {index_type!r}; choose 'flat' (exact) or 'hnsw' (approximate)")


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
    """Grids added since the map was opened, appended to a temporary file, so building a large
    map needs disk, not RAM. Rows are read back with pread. The file has no name (O_TMPFILE):
    a killed process leaves nothing behind. Where the file system cannot, it is a named file,
    locked while its process lives, that the next open beside it removes."""

    PREFIX, SUFFIX = ".grids-", ".spill"

    def __init__(self, shape: tuple[int, int, int], directory: str | None):
        self.row_shape = shape
        stale = remove_stale(directory or tempfile.gettempdir(), self.PREFIX, self.SUFFIX)  # of killed processes
        if stale:
            log.info("removed %d spilled-grid files of processes that are gone: %s", len(stale),
                     ", ".join(str(p) for p in stale))
        try:
            fd, self.path = unnamed_tempfile(directory), None
        except OSError:
            fd, self.path = locked_tempfile(directory, self.PREFIX, self.SUFFIX)  # locked while we live
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
            if self.path is None:
                link_unnamed(self.handle.fileno(), path)
            else:
                os.link(self.path, path)
        except OSError:
            return False
        return True

    def close(self) -> None:
        self.handle.close()
        if self.path is not None:
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
    mask_settings: MaskSettings = field(default_factory=MaskSettings)
    _cells: CellStatistics | None = None  # None: an older map whose sums are computed on first use
    preview: np.ndarray | None = None  # one frame of the map, for static_mask.png
    _mask: CellMask | None = None
    _known: dict = field(default_factory=dict)  # map path -> revision this object read or wrote

    def __post_init__(self):
        if self._index is None:
            self._index = _make_index(self.identity.global_dim, self.index_type)
        if self._cells is None and not self.places:
            self._cells = CellStatistics.empty(self.identity.local_shape)

    # -- the static-cell mask -------------------------------------------------------------
    @property
    def cells(self) -> CellStatistics:
        if self._cells is None:  # an older map: sum its grids once
            log.info("computing the static-cell statistics of this map (%d places; once, kept when it is saved)",
                     len(self))
            self._cells = CellStatistics.empty(self.identity.local_shape)
            for start in range(0, len(self), 256):
                self._cells.add(self.local_features(np.arange(start, min(start + 256, len(self)))))
        return self._cells

    @property
    def mask(self) -> CellMask:
        """Which grid cells may vote: learned static cells and the user's mask taken out."""
        if self._mask is None:
            self._mask = CellMask.derive(self.cells, self.mask_settings)
        return self._mask

    def set_mask_settings(self, settings: MaskSettings) -> None:
        self.mask_settings, self._mask = settings, None

    def usable_cells(self) -> np.ndarray | None:
        """(H*W,) bool cells that may vote, or None when all may."""
        mask = self.mask
        return None if mask.all_usable else mask.usable.reshape(-1)

    # -- content ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.places)

    def add(self, global_descriptors: np.ndarray, local_grids: np.ndarray,
            places: list[Place] | None = None) -> list[int]:
        """Append places in memory; returns their ids. Descriptors (N, D) are re-normalised."""
        g = np.ascontiguousarray(global_descriptors, dtype=np.float32).reshape(-1, self.identity.global_dim)
        loc = np.asarray(local_grids)
        if loc.shape[1:] != self.identity.local_shape or loc.shape[0] != g.shape[0]:
            raise MapError(f"local grids of shape {loc.shape} do not fit this map "
                           f"({g.shape[0]} x {self.identity.local_shape})")
        if not np.isfinite(g).all() or not np.isfinite(loc).all():
            raise MapError("refusing to add places whose descriptors or grids are not finite (NaN or Inf): the "
                           "model produced them; nothing was added")
        faiss.normalize_L2(g)
        first = len(self.places)
        ids = list(range(first, first + g.shape[0]))
        places = places or [Place(i) for i in ids]
        for pid, place in zip(ids, places):
            place.place_id = pid
            try:
                check_place(place)
            except ValueError as exc:
                raise MapError(f"refusing to add the place from {place.source or pid}: {exc}; nothing was added") \
                    from None
        self._index.add(g)
        if self._spill is None:
            self._spill = _SpillFile(self.identity.local_shape, self.spill_dir)
        self._spill.append(loc)
        self.cells.add(loc)
        self._mask = None
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
    def save(self, path: str | os.PathLike, replace: bool = False, lock_timeout: float = 60.0) -> None:
        """Write the whole map to ``path`` atomically (a crash leaves the previous map intact).

        ``path`` must be new, or an existing map with nothing else in it that this object read
        or wrote, unchanged since (``replace``: any map); anything else is refused with a
        MapError and never replaced: no user file is deleted, no other process's places are
        lost. Writers of one map take turns (``atomic.writer_lock``, waiting at most
        ``lock_timeout`` s); file-system failures are MapErrors that name the map.
        """
        target = Path(path).resolve()
        try:
            with writer_lock(target, lock_timeout):
                check_replaceable(target)
                self._check_unchanged(target, replace)
                target.parent.mkdir(parents=True, exist_ok=True)
                clean_leftovers(target)  # holding the writer lock: any temporary there is a dead writer's
                revision = uuid.uuid4().hex
                self._swap_in(target, revision)
        except LockTimeout as exc:
            raise MapError(str(exc)) from None
        except OSError as exc:
            raise MapError(f"cannot write the map {target}: {exc.strerror or exc}"
                           + (f" ({exc.filename})" if exc.filename and str(target) not in str(exc.filename) else ""))
        self._known[str(target)] = revision
        # from now on this object reads the saved files, and spilled rows are released
        self._local = _GridFile(target / LOCAL_GRIDS, len(self), self.identity.local_shape) if len(self) else None
        if self._spill is not None:
            self._spill.close()
            self._spill = None

    def _check_unchanged(self, target: Path, replace: bool) -> None:
        manifest = None if replace else _map_manifest(target)
        if manifest is None:
            return
        if str(target) not in self._known:
            raise MapError(f"refusing to replace the map {target}: this process did not open or write it (nothing "
                           "was changed); to add to it open it first (build-map --append, the node's map_path), or "
                           "choose a new path")
        if self._known[str(target)] != _revision(manifest):
            others = _field(manifest, "num_places", int)
            raise MapError(f"the map {target} was changed by another process since it was read here (it now has "
                           f"{others} places, this copy {len(self)}): nothing was saved, to lose neither; save to "
                           "a new path, or open the map again and add to that")

    def _swap_in(self, target: Path, revision: str) -> None:
        tmp, lock = locked_tempdir(target.parent, f".{target.name}.tmp-")
        try:
            self._write_files(tmp, revision)
            if target.exists():
                if not exchange(tmp, target):
                    old = target.with_name(f".{target.name}.old-{os.getpid()}")
                    os.replace(target, old)
                    os.replace(tmp, target)
                    tmp = old
                fsync_directory(target.parent)
                _remove_when_unread(tmp)
            else:
                os.replace(tmp, target)
                fsync_directory(target.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            os.close(lock)

    def _write_files(self, tmp: Path, revision: str) -> None:
        with open(tmp / GLOBAL_INDEX, "wb") as handle:  # Python's I/O: a full disk is an OSError, named
            handle.write(faiss.serialize_index(self._index).tobytes())
        # a new map: the spilled grids already are the file; otherwise copy old + new rows
        if self._local is None and self._spill is not None and self._spill.link_to(tmp / LOCAL_GRIDS):
            os.chmod(tmp / LOCAL_GRIDS, umask_mode())
        else:
            self._write_local(tmp / LOCAL_GRIDS)
        with open(tmp / PLACES, "w", encoding="utf-8") as handle:
            for place in self.places:
                handle.write(json.dumps(place.to_dict()) + "\n")
        self.cells.sums.astype("<f8").tofile(tmp / CELL_SUMS)
        manifest = {"format": FORMAT, "version": VERSION, "model": self.identity.to_dict(),
                    "num_places": len(self), "index": self.index_type, "build": self.build_info, "revision": revision,
                    "mask": _mask_record(self.mask_settings, self.mask)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        picture = mask_picture(self.preview, self.mask)
        cv2.imwrite(str(tmp / MASK_PICTURE), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        for name in ALL_MAP_FILES:
            _fsync_file(tmp / name)
        fsync_directory(tmp)

    def _write_local(self, path: Path) -> None:
        with open(path, "wb") as out:
            for start in range(0, len(self), 256):
                out.write(self.local_features(np.arange(start, min(start + 256, len(self)))).tobytes())

    @classmethod
    def open(cls, path: str | os.PathLike, expect: ModelIdentity | None = None) -> "MapDatabase":  # noqa: A003
        """Open a map read-only, checking every file against the manifest and the manifest
        against ``expect``; any problem is a MapError naming the file and the field.

        All files are read from one directory (by its file descriptor, under a shared lock), so
        a writer swapping in a new version meanwhile is never seen half-way: this reads the
        version it found, whole, or (had it been replaced before the lock) the new one.
        Leftovers of a writer that died beside this map are removed when no writer is at work.
        """
        path = Path(path)
        if (fd := try_writer_lock(path)) is not None:  # no writer at work: what lies beside it is debris
            try:
                clean_leftovers(path.resolve())
            finally:
                release_writer_lock(path, fd)
        for _ in range(20):
            with _reading(path) as root:
                if root is not None:
                    return cls._read(path, root, expect)
        raise MapError(f"map {path} is being replaced again and again; try again")

    @classmethod
    def _read(cls, path: Path, root: Path, expect: ModelIdentity | None) -> "MapDatabase":
        manifest = read_manifest(path, root)
        identity, num = manifest["identity"], manifest["num_places"]
        if expect is not None and identity != expect:
            raise MapError(_model_mismatch(path, identity, expect, manifest["build"]))
        index = read_index(path, num, identity.global_dim, root)
        expected_bytes = num * int(np.prod(identity.local_shape)) * 2
        local_file = root / LOCAL_GRIDS
        actual = local_file.stat().st_size if local_file.is_file() else -1
        if actual != expected_bytes:
            raise MapError(f"map {path}: {LOCAL_GRIDS} has {max(actual, 0)} bytes, expected "
                           f"{expected_bytes} for {num} places (truncated or missing file)")
        places = read_places(path, num, root)
        cells = read_cells(path, identity.local_shape, num, root)
        local = _GridFile(local_file, num, identity.local_shape) if num else None
        database = cls(identity, manifest["index"], places, manifest["build"], index, local,
                       mask_settings=manifest["mask"], _cells=cells)
        database._known[str(path.resolve())] = manifest["revision"]
        return database


@contextlib.contextmanager
def _reading(path: Path):
    """The map directory as it is now, held: a path into it by its file descriptor (a writer
    removes a replaced version only after its readers are done), or None when it was replaced
    between opening and locking (read again)."""
    if not (path / MANIFEST).is_file():
        raise MapError(f"no map at {path}: {MANIFEST} is missing (build one with build-map)")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise MapError(f"cannot open the map {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        root = Path(f"/proc/self/fd/{fd}")
        if not root.is_dir():  # no /proc: read by name (a writer's swap may then be seen)
            root = path
        yield root if (root / MANIFEST).is_file() else None
    finally:
        os.close(fd)


def _remove_when_unread(directory: Path) -> None:
    """Delete a replaced map version once the readers that hold it have finished."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        shutil.rmtree(directory, ignore_errors=True)
    finally:
        os.close(fd)


def _revision(manifest: dict) -> str:
    """The revision a map's manifest records ("" for maps written before revisions existed)."""
    value = manifest.get("revision")
    return value if isinstance(value, str) else ""


def _model_mismatch(path: Path, identity: ModelIdentity, expect: ModelIdentity, build: dict) -> str:
    diffs = [f"{k}: map {v!r} vs model {expect.to_dict()[k]!r}"
             for k, v in identity.to_dict().items() if v != expect.to_dict()[k]]
    built_with = build.get("checkpoint") or "ImageNet backbone, no checkpoint"
    return (f"map {path} was built with another model ({'; '.join(diffs)}); "
            f"rebuild the map or load the checkpoint it was built with ({built_with})")


def read_manifest(path: Path, root: Path | None = None) -> dict:
    """The checked manifest: identity, num_places, index type, build info, mask settings, revision
    (read from ``root``, the same directory by file descriptor, when given)."""
    file = (root or path) / MANIFEST
    if not file.is_file():
        raise MapError(f"no map at {path}: {MANIFEST} is missing (build one with build-map)")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MapError(f"map manifest {path / MANIFEST} is unreadable: {exc}") from exc
    if not isinstance(manifest, dict):
        raise MapError(f"map manifest {path / MANIFEST} holds a {type(manifest).__name__}, not an object")
    if manifest.get("format") != FORMAT:
        raise MapError(f"{path} is not a dhe_vpr_ros map ({path / MANIFEST}: format {manifest.get('format')!r})")
    try:
        version = _field(manifest, "version", int)
        if version > VERSION:
            raise MapError(f"map {path} has format version {version}, newer than this "
                           f"dhe_vpr_ros supports ({VERSION}); upgrade the package")
        identity = ModelIdentity.from_dict(_field(manifest, "model", dict))
        num = _field(manifest, "num_places", int)
        if num < 0:
            raise ValueError(f"field 'num_places' is {num}")
        index = _field(manifest, "index", str, optional=True) or "flat"
        if index not in INDEX_TYPES:
            raise ValueError(f"field 'index' is {index!r}, not one of {', '.join(INDEX_TYPES)}")
        build = _field(manifest, "build", dict, optional=True) or {}
        mask = _mask_settings(_field(manifest, "mask", dict, optional=True), identity.local_shape[1:])
        revision = _field(manifest, "revision", str, optional=True) or ""
    except ValueError as exc:
        raise MapError(f"map manifest {path / MANIFEST}: {exc}") from None
    return {"identity": identity, "num_places": num, "index": index, "build": build, "mask": mask,
            "revision": revision}


def _mask_record(settings: MaskSettings, mask: CellMask) -> dict:
    """The manifest's ``mask`` field: how the mask is made, and (for people) what it is now."""
    return {"threshold": settings.threshold, "roi": list(settings.roi), "user_file": settings.user_file,
            "user_masked_cells": np.flatnonzero(mask.user.reshape(-1)).tolist(),
            "static_cells": None if mask.static is None else np.flatnonzero(mask.static.reshape(-1)).tolist(),
            "summary": mask.summary()}


def _mask_settings(record: dict | None, grid: tuple[int, int]) -> MaskSettings:
    """MaskSettings from the manifest (defaults for an older map without the field)."""
    if record is None:
        return MaskSettings()
    threshold = _field(record, "threshold", (int, float))
    roi = _numbers(record, "roi", 4) or (0.0, 0.0, 0.0, 0.0)
    cells = _field(record, "user_masked_cells", list, optional=True) or []
    size = grid[0] * grid[1]
    if any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < size for c in cells):
        raise ValueError(f"field 'user_masked_cells' must list cell indices from 0 to {size - 1}")
    usable = None
    if cells:
        usable = np.ones(size, bool)
        usable[cells] = False
        usable = usable.reshape(grid)
    try:
        return MaskSettings(float(threshold), usable, tuple(float(v) for v in roi),
                            _field(record, "user_file", str, optional=True))
    except MaskError as exc:
        raise ValueError(f"field 'mask': {exc}") from None


def read_cells(path: Path, local_shape: tuple[int, int, int], num: int,
               root: Path | None = None) -> CellStatistics | None:
    """The stored cell sums, checked; None for an older map without them."""
    file = (root or path) / CELL_SUMS
    if not file.is_file():
        return None
    expected = int(np.prod(local_shape)) * 8
    if file.stat().st_size != expected:
        raise MapError(f"map {path}: {CELL_SUMS} has {file.stat().st_size} bytes, expected {expected} "
                       "(truncated or from another map)")
    sums = np.fromfile(file, dtype="<f8").reshape(local_shape)
    if not np.isfinite(sums).all():
        raise MapError(f"map {path}: {CELL_SUMS} holds values that are not finite; rebuild the map")
    return CellStatistics(sums.astype(np.float64), num)


def read_index(path: Path, num: int, dim: int, root: Path | None = None):
    """The FAISS index, checked against the manifest before and after reading, its vectors finite."""
    file = (root or path) / GLOBAL_INDEX
    if not file.is_file():
        raise MapError(f"map {path} is missing its global index {GLOBAL_INDEX}")
    vectors_bytes = num * dim * 4
    # the file holds the vectors and, for HNSW, at most a few KB of links per place: anything
    # else is corrupt, and reading it could make FAISS allocate whatever its header claims
    if not vectors_bytes <= file.stat().st_size <= vectors_bytes + 4096 * num + (1 << 20):
        raise MapError(f"map {path}: {GLOBAL_INDEX} has {file.stat().st_size} bytes, not what {num} "
                       f"descriptors of {dim} floats need (corrupt or from another map)")
    try:
        index = faiss.read_index(str(file))
    except (RuntimeError, MemoryError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MapError(f"map {path}: {GLOBAL_INDEX} is corrupt ({reason})") from None
    if index.ntotal != num or index.d != dim:
        raise MapError(f"map {path}: {GLOBAL_INDEX} holds {index.ntotal} x {index.d}, manifest says "
                       f"{num} x {dim}")
    for start in range(0, num, 8192):  # bounded memory for a large map
        chunk = index.reconstruct_n(start, min(8192, num - start))
        bad = np.flatnonzero(~np.isfinite(chunk).all(axis=1))
        if bad.size:
            raise MapError(f"map {path}: {GLOBAL_INDEX}: the global descriptor of place {start + int(bad[0])} "
                           "is not finite (NaN or Inf); rebuild the map")
    return index


def read_places(path: Path, num: int, root: Path | None = None) -> list[Place]:
    file = (root or path) / PLACES
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise MapError(f"map {path}: place metadata {PLACES} is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MapError(f"map {path}: {path / PLACES} is unreadable ({exc})") from None
    places = []
    for number, line in enumerate((ln for ln in lines if ln.strip()), 1):
        try:
            place = Place.from_dict(json.loads(line))
        except json.JSONDecodeError as exc:
            raise MapError(f"map {path}: {PLACES} line {number} is not JSON ({exc})") from None
        except ValueError as exc:
            raise MapError(f"map {path}: {PLACES} line {number}: {exc}") from None
        if place.place_id != number - 1:
            raise MapError(f"map {path}: {PLACES} line {number}: field 'place_id' is {place.place_id}, "
                           f"expected {number - 1}")
        places.append(place)
    if len(places) != num:
        raise MapError(f"map {path}: {len(places)} place records in {PLACES} for {num} places")
    return places


def is_map(path: Path) -> bool:
    """A directory holding a dhe_vpr_ros manifest (whatever its state)."""
    return _map_manifest(path) is not None


def _map_manifest(path: Path) -> dict | None:
    """The manifest of the dhe_vpr_ros map at ``path`` as read, unchecked; None when it holds none."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def check_replaceable(target: Path) -> None:
    """MapError unless ``target`` is absent, an empty directory, or a map directory holding
    only map files: nothing else is ever replaced."""
    if not target.exists() and not target.is_symlink():
        return
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        return
    if not target.is_dir() or not is_map(target):
        kind = "directory" if target.is_dir() else "file"
        raise MapError(f"refusing to write a map to {target}: it is an existing {kind} that is not a "
                       "dhe_vpr_ros map; choose a new path (nothing was changed)")
    foreign = sorted(p.name for p in target.iterdir() if p.name not in ALL_MAP_FILES)
    if foreign:
        raise MapError(f"refusing to replace the map {target}: it also holds files that are not part "
                       f"of a map ({', '.join(foreign[:5])}); move them or choose a new path")


def clean_leftovers(target: Path) -> list[Path]:
    """Remove what a killed writer left beside ``target``: its temporary map directories and
    spilled grids (only those no living process holds)."""
    parent = target.parent
    # (a ".NAME.old-PID" directory is never removed: without renameat2 it can be the only copy)
    removed = remove_stale(parent, f".{target.name}.tmp-") + remove_stale(parent, _SpillFile.PREFIX, _SpillFile.SUFFIX)
    if removed:
        log.info("removed %d leftovers of an interrupted map write: %s", len(removed),
                 ", ".join(p.name for p in removed))
    return removed
