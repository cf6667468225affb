# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The map's files: their names, what each holds, and reading them back with every field checked.

Layout of ``MAP/``::

    manifest.json   format, version, model identity (backbone, checkpoint hash, input size),
                    feature shapes, number of places, index type, revision, mask settings
    global.faiss    FAISS index of L2-normalised global descriptors (inner product);
                    the FAISS row is the place id
    local.f16       float16 (N, C, H, W) local grids, raw rows: a query reads only its K
                    candidates' rows (one pread each), so a large map never has to fit in RAM
    places.jsonl    one JSON object per place: place_id, source, timestamp_ns, pose, utm,
                    image_size
    cells.f64       float64 (C, H, W): the sum of every place's local grid, from which the
                    static-cell mask is learned (``static_mask``; absent in older maps)
    static_mask.png the mask drawn over one of the map's frames (for people; never read)
    keypoints.orb   each place's ORB keypoints and descriptors (``keypoints``: a row of 18 KB a
                    place, from place ``first_place`` on; absent in older maps), for the
                    two-view check of loop closures

The manifest's ``mask`` field holds how the mask is made (threshold, the user's cells, ROI), and
its ``files`` field what belongs together: each file's size and fingerprint as the write that made
the map left it (``fingerprint``: a hash of the size and of evenly spaced blocks, so a map of any
size is checked in milliseconds), so a file of another map of the same size is told apart.
Reading checks every file and field and raises ``MapError`` naming the file and the field
instead of returning wrong matches.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import faiss
import numpy as np

from ..json_fields import field, numbers
from ..method.identity import ModelIdentity
from ..reading import InputError, read_text
from .codec import COMPACT, FLOAT16, GridCodec
from .index import INDEX_TYPES, prepared
from .keypoints import FEATURES, ROW_BYTES
from .records import Place
from .static_mask import CellMask, CellStatistics, MaskError, MaskSettings

__all__ = ["ALL_MAP_FILES", "CELL_SUMS", "COMPACT_GRIDS", "FORMAT", "GLOBAL_INDEX", "INDEX_TYPES", "KEYPOINTS",
           "LOCAL_GRIDS", "MANIFEST", "PROJECTION", "check_keypoint_file", "codec_from", "grid_file_name",
           "keypoint_record", "keypoints_from", "read_projection",
           "MAP_FILES", "MASK_PICTURE", "PLACES", "VERSION", "MapError", "check_grid_file", "check_replaceable",
           "check_files", "fingerprint", "is_map", "map_manifest", "mask_record", "mask_settings_from",
           "model_mismatch", "read_cells", "read_index", "read_manifest", "read_places", "revision_of"]

FORMAT = "dhe_vpr_ros.map"
VERSION = 3  # 1: float16 grids (local.f16); 2: compact grids (local.pq4 + projection.f32, ``codec``);
#              3: a keypoint layer (keypoints.orb): written only where a map has one
MANIFEST, GLOBAL_INDEX, LOCAL_GRIDS, PLACES = "manifest.json", "global.faiss", "local.f16", "places.jsonl"
COMPACT_GRIDS, PROJECTION = "local.pq4", "projection.f32"
CELL_SUMS, MASK_PICTURE, KEYPOINTS = "cells.f64", "static_mask.png", "keypoints.orb"
MAP_FILES = (GLOBAL_INDEX, LOCAL_GRIDS, PLACES, MANIFEST)  # required (format 1); the others are optional
ALL_MAP_FILES = (*MAP_FILES, CELL_SUMS, MASK_PICTURE, COMPACT_GRIDS, PROJECTION, KEYPOINTS)


MAX_MANIFEST_BYTES, MAX_PLACES_BYTES = 1 << 24, 1 << 34  # what a map's text files may hold, at most


class MapError(RuntimeError):
    """A map is missing, corrupt, of a newer format, or built with another model."""


def revision_of(manifest: dict) -> str:
    """The revision a map's manifest records ("" for maps written before revisions existed)."""
    value = manifest.get("revision")
    return value if isinstance(value, str) else ""


def model_mismatch(path: Path, identity: ModelIdentity, expect: ModelIdentity, build: dict) -> str:
    diffs = [f"{k}: map {v!r} vs model {expect.to_dict()[k]!r}"
             for k, v in identity.to_dict().items() if v != expect.to_dict()[k]]
    built_with = build.get("checkpoint") or "ImageNet backbone, no checkpoint"
    if identity.precision != expect.precision:  # the same checkpoint, the other graph: say the one setting
        return (f"map {path} was built with another model ({'; '.join(diffs)}); rebuild the map or query it "
                f"with precision {identity.precision} (built with {built_with})")
    return (f"map {path} was built with another model ({'; '.join(diffs)}); "
            f"rebuild the map or load the checkpoint it was built with ({built_with})")


def read_manifest(path: Path, root: Path | None = None) -> dict:
    """The checked manifest: identity, num_places, index type, build info, mask settings, revision
    (read from ``root``, the same directory by file descriptor, when given)."""
    file = (root or path) / MANIFEST
    try:
        manifest = json.loads(read_text(file, "map manifest", MAX_MANIFEST_BYTES))
    except FileNotFoundError:
        raise MapError(f"no map at {path}: {MANIFEST} is missing (build one with build-map)") from None
    except (OSError, InputError, json.JSONDecodeError) as exc:
        raise MapError(f"map manifest {path / MANIFEST} is unreadable: {exc}") from None
    if not isinstance(manifest, dict):
        raise MapError(f"map manifest {path / MANIFEST} holds a {type(manifest).__name__}, not an object")
    if manifest.get("format") != FORMAT:
        raise MapError(f"{path} is not a dhe_vpr_ros map ({path / MANIFEST}: format {manifest.get('format')!r})")
    try:
        version = field(manifest, "version", int)
        if version > VERSION:
            raise MapError(f"map {path} has format version {version}, newer than this "
                           f"dhe_vpr_ros supports ({VERSION}); upgrade the package")
        identity = ModelIdentity.from_dict(field(manifest, "model", dict))
        num = field(manifest, "num_places", int)
        if num < 0:
            raise ValueError(f"field 'num_places' is {num}")
        index = field(manifest, "index", str, optional=True) or "flat"
        if index not in INDEX_TYPES:
            raise ValueError(f"field 'index' is {index!r}, not one of {', '.join(INDEX_TYPES)}")
        build = field(manifest, "build", dict, optional=True) or {}
        mask = mask_settings_from(field(manifest, "mask", dict, optional=True), identity.local_shape[1:])
        revision = field(manifest, "revision", str, optional=True) or ""
        codec = codec_from(field(manifest, "grids", dict, optional=True), version, identity.local_shape[0])
        first_keypoints = keypoints_from(field(manifest, "keypoints", dict, optional=True), num)
        files = field(manifest, "files", dict, optional=True) or {}
    except ValueError as exc:
        raise MapError(f"map manifest {path / MANIFEST}: {exc}") from None
    return {"identity": identity, "num_places": num, "index": index, "build": build, "mask": mask,
            "revision": revision, "codec": codec, "keypoints_from": first_keypoints, "files": files}


FINGERPRINT_BLOCKS, FINGERPRINT_BLOCK = 16, 1 << 16


def fingerprint(path: Path) -> str:
    """A hash of a file's size and of ``FINGERPRINT_BLOCKS`` evenly spaced blocks of it (all of a small file):
    what a map's manifest records for each file, read in milliseconds whatever the file's size."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        digest.update(size.to_bytes(8, "little"))
        span = FINGERPRINT_BLOCKS * FINGERPRINT_BLOCK
        starts = [0] if size <= span else \
            [round(i * (size - FINGERPRINT_BLOCK) / (FINGERPRINT_BLOCKS - 1)) for i in range(FINGERPRINT_BLOCKS)]
        for start in starts:
            digest.update(os.pread(fd, span if size <= span else FINGERPRINT_BLOCK, start))
    finally:
        os.close(fd)
    return digest.hexdigest()


def check_files(path: Path, root: Path, files: dict) -> None:
    """MapError naming the file when a file of the map is not the one its write left (another size or
    fingerprint: copied in from another map, or changed since)."""
    for name, record in files.items():
        if name not in ALL_MAP_FILES or name == MANIFEST:
            raise MapError(f"map manifest {path / MANIFEST}: field 'files' lists {name!r}, not a file of a map")
        try:
            size, expected = field(record, "bytes", int), field(record, "fingerprint", str)
        except ValueError as exc:
            raise MapError(f"map manifest {path / MANIFEST}: field 'files' of {name}: {exc}") from None
        file = root / name
        actual = file.stat().st_size if file.is_file() else -1
        if actual != size or fingerprint(file) != expected:
            raise MapError(f"map {path}: {name} is not the file this map was written with ("
                           + (f"{max(actual, 0)} bytes, the map's write left {size}" if actual != size else
                              "its bytes differ from what the map's write recorded")
                           + "): copied from another map, or changed since; rebuild the map")


def keypoint_record(first_place: int) -> dict:
    """The manifest's ``keypoints`` field: what the layer holds and from which place on."""
    return {"detector": "orb", "features": FEATURES, "row_bytes": ROW_BYTES, "first_place": first_place}


def keypoints_from(record: dict | None, num: int) -> int:
    """The first place with a row in the keypoint layer (``num``, i.e. none, for a map without one)."""
    if record is None:
        return num
    detector, features, row_bytes = (field(record, "detector", str), field(record, "features", int),
                                     field(record, "row_bytes", int))
    if (detector, features, row_bytes) != ("orb", FEATURES, ROW_BYTES):
        raise ValueError(f"field 'keypoints' describes {features} {detector} features in rows of {row_bytes} bytes, "
                         f"not the {FEATURES} orb features in {ROW_BYTES} this version reads")
    first = field(record, "first_place", int)
    if not 0 <= first <= num:
        raise ValueError(f"field 'keypoints' has first_place {first}, not 0 to {num}")
    return first


def check_keypoint_file(path: Path, root: Path, num: int, first: int) -> Path | None:
    """The keypoint layer's file, checked to hold a row for each place from ``first`` on; None without a layer."""
    if first == num:
        return None
    file = root / KEYPOINTS
    expected = (num - first) * ROW_BYTES
    actual = file.stat().st_size if file.is_file() else -1
    if actual != expected:
        raise MapError(f"map {path}: {KEYPOINTS} has {max(actual, 0)} bytes, expected {expected} for places "
                       f"{first} to {num - 1} (truncated or missing file)")
    return file


def codec_from(record: dict | None, version: int, channels: int) -> GridCodec:
    """The grid codec a manifest names (format 1: float16), its projection not read yet."""
    if record is None:
        if version > 1:
            raise ValueError("field 'grids' is missing (a format 2 map names its grid codec)")
        return GridCodec(FLOAT16)
    name = field(record, "codec", str)
    if name == FLOAT16:
        return GridCodec(FLOAT16)
    if name != COMPACT:
        raise ValueError(f"field 'grids' names codec {name!r}, not {FLOAT16} or {COMPACT}")
    dims = field(record, "dims", int)
    if not 0 < dims <= channels:
        raise ValueError(f"field 'grids' has dims {dims}, not 1 to {channels}")
    return GridCodec(COMPACT, dims)


def read_projection(path: Path, root: Path, codec: GridCodec, local_shape: tuple[int, int, int]) -> GridCodec:
    """The codec with its projection read (and checked) from the map, for compact grids."""
    if not codec.compact:
        return codec
    file = root / PROJECTION
    expected = codec.dims * local_shape[0] * 4
    actual = file.stat().st_size if file.is_file() else -1
    if actual != expected:
        raise MapError(f"map {path}: {PROJECTION} has {max(actual, 0)} bytes, expected {expected} "
                       "(truncated or missing file)")
    projection = np.fromfile(file, dtype="<f4").reshape(codec.dims, local_shape[0])
    if not np.isfinite(projection).all():
        raise MapError(f"map {path}: {PROJECTION} holds values that are not finite; rebuild the map")
    return GridCodec(codec.name, codec.dims, projection.astype(np.float32))


def mask_record(settings: MaskSettings, mask: CellMask) -> dict:
    """The manifest's ``mask`` field: how the mask is made, and (for people) what it is now."""
    return {"threshold": settings.threshold, "roi": list(settings.roi), "user_file": settings.user_file,
            "user_masked_cells": np.flatnonzero(mask.user.reshape(-1)).tolist(),
            "static_cells": None if mask.static is None else np.flatnonzero(mask.static.reshape(-1)).tolist(),
            "summary": mask.summary()}


def mask_settings_from(record: dict | None, grid: tuple[int, int]) -> MaskSettings:
    """MaskSettings from the manifest (defaults for an older map without the field)."""
    if record is None:
        return MaskSettings()
    threshold = field(record, "threshold", (int, float))
    roi = numbers(record, "roi", 4) or (0.0, 0.0, 0.0, 0.0)
    cells = field(record, "user_masked_cells", list, optional=True) or []
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
                            field(record, "user_file", str, optional=True))
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
    index = prepared(index)
    for start in range(0, num, 8192):  # bounded memory for a large map
        chunk = index.reconstruct_n(start, min(8192, num - start))
        bad = np.flatnonzero(~np.isfinite(chunk).all(axis=1))
        if bad.size:
            raise MapError(f"map {path}: {GLOBAL_INDEX}: the global descriptor of place {start + int(bad[0])} "
                           "is not finite (NaN or Inf); rebuild the map")
    return index


def grid_file_name(codec: GridCodec) -> str:
    return COMPACT_GRIDS if codec.compact else LOCAL_GRIDS


def check_grid_file(path: Path, root: Path, num: int, local_shape: tuple[int, int, int],
                    codec: GridCodec = GridCodec()) -> Path:
    """The grid file, checked to hold exactly ``num`` rows of ``codec``'s size."""
    name = grid_file_name(codec)
    expected_bytes = num * codec.row_bytes(local_shape)
    local_file = root / name
    actual = local_file.stat().st_size if local_file.is_file() else -1
    if actual != expected_bytes:
        raise MapError(f"map {path}: {name} has {max(actual, 0)} bytes, expected "
                       f"{expected_bytes} for {num} places (truncated or missing file)")
    return local_file


def read_places(path: Path, num: int, root: Path | None = None) -> list[Place]:
    file = (root or path) / PLACES
    try:
        lines = read_text(file, "place metadata", MAX_PLACES_BYTES).splitlines()
    except FileNotFoundError:
        raise MapError(f"map {path}: place metadata {PLACES} is missing") from None
    except (OSError, InputError) as exc:
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
    return map_manifest(path) is not None


def map_manifest(path: Path) -> dict | None:
    """The manifest of the dhe_vpr_ros map at ``path`` as read, unchecked; None when it holds none (also
    where ``manifest.json`` is no regular file: a FIFO there is never opened for reading)."""
    try:
        manifest = json.loads(read_text(path / MANIFEST, "map manifest", MAX_MANIFEST_BYTES))
    except (OSError, ValueError):
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
