# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The map database: places with global descriptors (a FAISS index) and local feature grids.

``MapDatabase`` is a map in memory: its index, its places' records, its grids (the stored rows
read on demand, new rows spilled to disk) and its static-cell mask. ``open`` reads a map
directory with every file checked (``format``); ``save`` writes one atomically under the map's
writer lock (``storage``), never over something that is not a map, or that another process
changed since this one read it.
"""
from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import faiss
import numpy as np

from ..atomic import fsync_directory, fsync_file, guarded, refuse_link, umask_mode, write_bytes, write_error
from ..locks import LockTimeout, release_writer_lock, try_writer_lock, writer_lock
from ..method.identity import ModelIdentity
from .codec import GridCodec
from .format import (CELL_SUMS, FORMAT, GLOBAL_INDEX, KEYPOINTS, MANIFEST, MASK_PICTURE, PLACES, PROJECTION,
                     MapError, check_files, check_grid_file, check_keypoint_file, check_replaceable, fingerprint,
                     grid_file_name, keypoint_record, mask_record, model_mismatch, read_cells, read_index,
                     read_manifest, read_places, read_projection)
from .grids import GridFile, SpillFile
from .index import make_index, search, stored_vectors, trained
from .keypoints import Keypoints, RowCodec, decode_row, describe, encode_row
from .records import Place, check_place
from .static_mask import MAX_STATIC_SHARE, MIN_USABLE_CELLS, CellMask, CellStatistics, MaskSettings, mask_picture
from .storage import check_unchanged, check_writable, clean_leftovers, reading, swap_in

__all__ = ["MapDatabase"]

log = logging.getLogger(__name__)

FIT_PLACES = 256  # a compact map fits its projection on its first places (147k cell descriptors)


@dataclass
class MapDatabase:
    """An opened (or in-memory, growing) map. Place ids are rows: 0..N-1, stable on append."""

    identity: ModelIdentity
    index_type: str = "flat"
    places: list[Place] = field(default_factory=list)
    build_info: dict = field(default_factory=dict)  # e.g. the checkpoint path and file hash
    _index: object = None
    _local: GridFile | None = None  # the stored grids when opened from disk
    spill_dir: str | None = None  # where grids added since opening wait (default: system temp)
    _spill: SpillFile | None = None
    mask_settings: MaskSettings = field(default_factory=MaskSettings)
    _cells: CellStatistics | None = None  # None: an older map whose sums are computed on first use
    preview: np.ndarray | None = None  # one frame of the map, for static_mask.png
    _mask: CellMask | None = None
    _known: dict = field(default_factory=dict)  # map path -> revision this object read or wrote
    codec: GridCodec = field(default_factory=GridCodec)  # how grids are stored (compact: format 2)
    keypoints_from: int = 0  # the first place with a row in the keypoint layer (older maps: the first added)
    _mask_warned: bool = False
    _keypoint_rows: GridFile | None = None  # the stored rows of the keypoint layer
    _keypoint_spill: SpillFile | None = None  # rows added since opening

    def __post_init__(self):
        if self._index is None:
            self._index = make_index(self.identity.global_dim, self.index_type)
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
        """(H*W,) bool cells that may vote, or None when all may. A learned mask that calls most cells
        static (``MAX_STATIC_SHARE``; a lens ring, a hood and a timestamp cover about a third) or leaves too
        few to verify any place means the map's frames hardly differ (a camera that stood still): it is not
        applied, only the user's part, and that is said once; it would make the scores meaningless
        (``build-map`` refuses a map it leaves too few cells; a map grown online meets it while the robot
        stands still at its start)."""
        mask = self.mask
        degenerate = mask.static is not None and mask.static.mean() > MAX_STATIC_SHARE
        if degenerate or mask.static is not None and mask.usable.sum() < MIN_USABLE_CELLS:
            if not self._mask_warned:
                self._mask_warned = True
                log.warning("the learned static-cell mask would leave %d of %d cells to match (the map's %d places "
                            "hardly differ: a camera that stood still?); matching uses every cell the user did not "
                            "mask until the places differ", int(mask.usable.sum()), mask.usable.size, len(self))
            user_only = ~mask.user.reshape(-1)
            return None if user_only.all() else user_only
        return None if mask.all_usable else mask.usable.reshape(-1)

    # -- content ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.places)

    def add(self, global_descriptors: np.ndarray, local_grids: np.ndarray, places: list[Place] | None = None,
            keypoints: list[Keypoints | None] | None = None, images: list[np.ndarray] | None = None) -> list[int]:
        """Append places in memory; returns their ids. Descriptors (N, D) are re-normalised. Each place's
        row of the keypoint layer comes from ``keypoints``, else is described from its RGB frame in
        ``images``, else is marked absent (its loop closures then skip the two-view check)."""
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
        if self._spill is None:  # a compact map without its projection yet spills float16 until it has one
            ready = not self.codec.compact or self.codec.projection is not None
            self._spill = SpillFile(self.identity.local_shape, self.spill_dir, self.codec if ready else GridCodec())
        self._spill.append(loc)
        self._append_keypoints(g.shape[0], keypoints, images)
        self.cells.add(loc)
        self._mask = None
        self.places.extend(places)
        self._fit_codec(FIT_PLACES)
        return ids

    def _append_keypoints(self, count: int, keypoints, images) -> None:
        """Rows of the keypoint layer for ``count`` new places; while the layer holds no row yet, places
        added without frames do not start it (it then begins at the first place that has one)."""
        if keypoints is None and images is None and self._keypoint_rows is None and self._keypoint_spill is None:
            self.keypoints_from += count
            return
        if keypoints is None:
            keypoints = [describe(image) for image in images] if images is not None else [None] * count
        if len(keypoints) != count:
            raise MapError(f"{len(keypoints)} keypoint sets for {count} places")
        if self._keypoint_spill is None:
            self._keypoint_spill = SpillFile((1,), self.spill_dir, RowCodec())
        self._keypoint_spill.append(np.stack([encode_row(k) for k in keypoints]))

    @property
    def has_keypoints(self) -> bool:
        """Whether any place has a row in the keypoint layer (maps built before it have none)."""
        return self.keypoints_from < len(self)

    def keypoints(self, place_id: int) -> Keypoints | None:
        """The place's ORB keypoints, None where the map has none for it (built before the layer)."""
        row = int(place_id) - self.keypoints_from
        if row < 0 or place_id >= len(self):
            return None
        stored = 0 if self._keypoint_rows is None else self._keypoint_rows.count
        index = np.array([row if row < stored else row - stored])
        raw = (self._keypoint_rows if row < stored else self._keypoint_spill).raw(index)[0]
        try:
            return decode_row(raw)
        except ValueError as exc:
            raise MapError(f"map place {place_id}: its row in {KEYPOINTS} is corrupt ({exc})") from None

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
        return search(self._index, q, k, exclude_ids)

    def _fit_codec(self, enough: int) -> None:
        """A compact map fits its projection once ``enough`` places are in (on them), and from then
        on spills its grids compact; before that they wait as float16."""
        if not self.codec.compact or self.codec.projection is not None or len(self) < enough:
            return
        sample = np.linspace(0, len(self) - 1, min(len(self), 2048)).round().astype(np.int64)
        self.codec = self.codec.fitted(self.local_features(np.unique(sample)))
        if self._spill is not None:
            self._spill = self._spill.recoded(self.codec)

    def similarities(self, query: np.ndarray, ids) -> np.ndarray:
        """(len(ids),) inner products of the L2-normalised ``query`` with the given places' stored
        global descriptors (what ``search`` would have scored them)."""
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, self.identity.global_dim)
        faiss.normalize_L2(q)
        ids = np.asarray(ids, dtype=np.int64)
        if not ids.size:
            return np.zeros(0, np.float32)
        return (stored_vectors(self._index, ids) @ q[0]).astype(np.float32)

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
        lost. Writers of one map take turns (``locks.writer_lock``, waiting at most
        ``lock_timeout`` s); file-system failures are MapErrors that name the map.
        """
        try:
            refuse_link(path, "a map folder")
        except OSError as exc:
            raise MapError(str(exc)) from None
        target = Path(path).resolve()
        try:
            with writer_lock(target, lock_timeout):
                check_replaceable(target)
                check_writable(target)
                check_unchanged(target, self._known, replace, len(self))
                target.parent.mkdir(parents=True, exist_ok=True)
                clean_leftovers(target)  # holding the writer lock: any temporary there is a dead writer's
                revision = uuid.uuid4().hex
                swap_in(target, lambda tmp: self._write_files(tmp, revision))
        except LockTimeout as exc:
            raise MapError(str(exc)) from None
        except OSError as exc:
            raise MapError(str(write_error(f"the map {target}", exc))) from None
        self._known[str(target)] = revision
        # from now on this object reads the saved files, and spilled rows are released
        self._local = GridFile(target / grid_file_name(self.codec), len(self), self.identity.local_shape,
                               self.codec) if len(self) else None
        if self._spill is not None:
            self._spill.close()
            self._spill = None
        self._keypoint_rows = GridFile(target / KEYPOINTS, len(self) - self.keypoints_from, (1,), RowCodec()) \
            if self.has_keypoints else None
        if self._keypoint_spill is not None:
            self._keypoint_spill.close()
            self._keypoint_spill = None

    def _write_files(self, tmp: Path, revision: str) -> None:
        """Every file of the map into ``tmp``, each through the write door (``atomic``), then the manifest
        with the revision and each file's size and fingerprint (what belongs together)."""
        self._index = trained(self._index, self.index_type)
        write_bytes(tmp / GLOBAL_INDEX, faiss.serialize_index(self._index).tobytes())
        self._fit_codec(1)
        if self.codec.compact:
            write_bytes(tmp / PROJECTION, self.codec.projection.astype("<f4").tobytes())
        # a new map: the spilled grids already are the file (in its codec); otherwise copy old + new rows
        grids = tmp / grid_file_name(self.codec)
        if self._local is None and self._spill is not None and self._spill.codec.same_as(self.codec) \
                and self._spill.link_to(grids):
            os.chmod(grids, umask_mode())
            fsync_file(grids)
        else:
            self._write_local(grids)
        write_bytes(tmp / PLACES, "".join(json.dumps(place.to_dict()) + "\n" for place in self.places).encode())
        write_bytes(tmp / CELL_SUMS, self.cells.sums.astype("<f8").tobytes())
        if self.has_keypoints:
            self._write_keypoints(tmp / KEYPOINTS)
        ok, picture = cv2.imencode(".png", cv2.cvtColor(mask_picture(self.preview, self.mask), cv2.COLOR_RGB2BGR))
        if not ok:
            raise OSError(f"OpenCV could not encode {MASK_PICTURE}")
        write_bytes(tmp / MASK_PICTURE, picture.tobytes())
        version = 3 if self.has_keypoints else 2 if self.codec.compact else 1
        files = {p.name: {"bytes": p.stat().st_size, "fingerprint": fingerprint(p)} for p in sorted(tmp.iterdir())
                 if p.name != MANIFEST and not p.name.startswith(".")}
        manifest = {"format": FORMAT, "version": version, "model": self.identity.to_dict(),
                    "num_places": len(self), "index": self.index_type, "build": self.build_info, "revision": revision,
                    "mask": mask_record(self.mask_settings, self.mask),
                    **({"grids": self.codec.to_dict()} if version > 1 else {}),
                    **({"keypoints": keypoint_record(self.keypoints_from)} if self.has_keypoints else {}),
                    "files": files}
        write_bytes(tmp / MANIFEST, json.dumps(manifest, indent=2).encode())
        fsync_directory(tmp)

    def _write_keypoints(self, path: Path) -> None:
        """The keypoint layer: the stored rows, then the added ones, as they are."""
        with guarded(open(path, "wb")) as out:
            for source in (self._keypoint_rows, self._keypoint_spill):
                count = 0 if source is None else source.count
                for start in range(0, count, 256):
                    out.write(source.raw(np.arange(start, min(start + 256, count))).tobytes())
            os.fsync(out.fileno())

    def _write_local(self, path: Path) -> None:
        """The grids in this map's codec: stored rows of the same codec as they are (no second
        rounding), the others encoded; a compact map fits its projection on its places first."""
        stored = self._local.count if self._local is not None else 0
        copy_stored = self._local is not None and self._local.codec.same_as(self.codec)
        copy_spill = self._spill is not None and self._spill.codec.same_as(self.codec)
        with guarded(open(path, "wb")) as out:
            for start in range(0, len(self), 256):
                ids = np.arange(start, min(start + 256, len(self)))
                for part, source, copy in ((ids[ids < stored], self._local, copy_stored),
                                           (ids[ids >= stored] - stored, self._spill, copy_spill)):
                    if part.size:  # rows already in this codec are copied, never rounded twice
                        rows = source.raw(part) if copy else self.codec.encode(source.rows(part))
                        out.write(rows.tobytes())
            os.fsync(out.fileno())

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
            with reading(path) as root:
                if root is not None:
                    return cls._read(path, root, expect)
        raise MapError(f"map {path} is being replaced again and again; try again")

    @classmethod
    def _read(cls, path: Path, root: Path, expect: ModelIdentity | None) -> "MapDatabase":
        manifest = read_manifest(path, root)
        identity, num = manifest["identity"], manifest["num_places"]
        if expect is not None and identity != expect:
            raise MapError(model_mismatch(path, identity, expect, manifest["build"]))
        index = read_index(path, num, identity.global_dim, root)
        codec = read_projection(path, root, manifest["codec"], identity.local_shape)
        local_file = check_grid_file(path, root, num, identity.local_shape, codec)
        places = read_places(path, num, root)
        cells = read_cells(path, identity.local_shape, num, root)
        local = GridFile(local_file, num, identity.local_shape, codec) if num else None
        first = manifest["keypoints_from"]
        keypoint_file = check_keypoint_file(path, root, num, first)
        check_files(path, root, manifest["files"])  # after the checks that say more: what belongs together
        rows = GridFile(keypoint_file, num - first, (1,), RowCodec()) if keypoint_file else None
        database = cls(identity, manifest["index"], places, manifest["build"], index, local,
                       mask_settings=manifest["mask"], _cells=cells, codec=codec, keypoints_from=first,
                       _keypoint_rows=rows)
        database._known[str(path.resolve())] = manifest["revision"]
        return database
