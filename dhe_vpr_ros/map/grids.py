# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The places' local feature grids on disk: the stored rows of a map (read K rows per query, by
pread), and the rows added since it was opened (spilled to a temporary file, not kept in RAM)."""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from ..atomic import Scratch, guarded, link_unnamed, remove_stale, umask_mode, unnamed_tempfile, write_error
from .codec import GridCodec
from .format import MapError

__all__ = ["GridFile", "SpillFile", "read_raw"]

log = logging.getLogger(__name__)


def read_raw(fd: int, index: np.ndarray, row_bytes: int) -> np.ndarray:
    """Rows ``index`` of a file of ``row_bytes``-byte rows, one pread each: (K, row_bytes) uint8.

    pread rather than a memory map: reading K rows then costs K rows of I/O and no more,
    whereas mapped pages are counted in the process's resident memory (the kernel maps file
    pages in 2 MB folios) and a long-running node would appear to grow without bound.
    """
    out = np.empty((len(index), row_bytes), dtype=np.uint8)
    for j, row in enumerate(np.asarray(index, dtype=np.int64)):
        got = os.preadv(fd, [out[j]], int(row) * row_bytes)
        if got != row_bytes:
            raise MapError(f"short read of map row {row} ({got} of {row_bytes} bytes): file truncated?")
    return out


class GridFile:
    """Read-only access to the stored local grids (local.f16, or compact local.pq4 decoded by ``codec``)."""

    def __init__(self, path: Path, count: int, row_shape: tuple[int, int, int], codec: GridCodec = GridCodec()):
        self.path, self.count, self.row_shape, self.codec = Path(path), count, row_shape, codec
        self.fd = os.open(path, os.O_RDONLY)

    def raw(self, index: np.ndarray) -> np.ndarray:
        """The stored bytes of rows ``index`` (K, row_bytes), as the codec wrote them."""
        return read_raw(self.fd, index, self.codec.row_bytes(self.row_shape))

    def rows(self, index: np.ndarray) -> np.ndarray:
        """float16 (K, C, H, W) grids of rows ``index``."""
        return self.codec.decode(self.raw(index), self.row_shape)

    def __del__(self):
        with contextlib.suppress(Exception):
            os.close(self.fd)


class SpillFile:
    """Grids added since the map was opened, appended to a temporary file, so building a large
    map needs disk, not RAM; stored as ``codec`` writes them (a compact map's spill is compact
    too: a million places then take 28 GB while they wait, not 129). Rows are read back with
    pread. The file has no name (O_TMPFILE): a killed process leaves nothing behind. Where the
    file system cannot, it is a file in a temporary folder of this package's (``atomic.Scratch``:
    marked, locked while its process lives), which the next spill beside it removes once that
    process is gone; nothing else is ever removed."""

    def __init__(self, shape: tuple[int, int, int], directory: str | None, codec: GridCodec = GridCodec()):
        self.row_shape, self.codec = shape, codec
        self.directory = directory or tempfile.gettempdir()
        stale = remove_stale(self.directory)  # of killed processes, marked as this package's
        if stale:
            log.info("removed %d temporaries of processes that are gone: %s", len(stale),
                     ", ".join(str(p) for p in stale))
        self._scratch: Scratch | None = None
        try:
            try:
                fd, self.path = unnamed_tempfile(self.directory), None
            except OSError:
                self._scratch = Scratch(self.directory, "spilled rows of a map being written")
                self.path = self._scratch.path / "rows"
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, umask_mode())
        except OSError as exc:
            raise write_error(self.directory, exc, "spilling the rows of a map being written") from None
        self.handle = os.fdopen(fd, "w+b")
        self.count = 0

    def append(self, grids: np.ndarray) -> None:
        try:
            guarded(self.handle).write(self.codec.encode(grids).tobytes())
            self.handle.flush()
        except OSError as exc:
            raise write_error(self.directory, exc, "spilling the rows of a map being written") from None
        self.count += grids.shape[0]

    def raw(self, index: np.ndarray) -> np.ndarray:
        """The stored bytes of rows ``index`` (K, row_bytes)."""
        return read_raw(self.handle.fileno(), index, self.codec.row_bytes(self.row_shape))

    def rows(self, index: np.ndarray) -> np.ndarray:
        return self.codec.decode(self.raw(index), self.row_shape)

    def recoded(self, codec: GridCodec) -> "SpillFile":
        """A new spill holding these rows in ``codec`` (this one is closed)."""
        other = SpillFile(self.row_shape, self.directory, codec)
        for start in range(0, self.count, 256):
            other.append(self.rows(np.arange(start, min(start + 256, self.count))))
        self.close()
        return other

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
        if self._scratch is not None:
            self._scratch.release()
            self._scratch = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()
