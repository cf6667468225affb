# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Writing a map directory without ever corrupting it, reading one while another process writes.

A new version is written into a temporary folder of this package's beside the map
(``atomic.Scratch``: marked, locked), fsynced, and swapped in atomically
(``renameat2(RENAME_EXCHANGE)`` on Linux); the replaced version is deleted once its readers are
done (they hold a shared lock on the directory they opened). Leftovers of a killed writer are
removed on the next open or write, only those marked as this package's and held by no living
process: never a folder by its name alone.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
from pathlib import Path
from typing import Callable

from ..atomic import (Scratch, check_name, check_not_protected, exchange, fsync_directory, remove_stale, sibling,
                      write_bytes)
from ..json_fields import field
from .format import MANIFEST, MapError, map_manifest, revision_of

__all__ = ["check_unchanged", "check_writable", "clean_leftovers", "reading", "swap_in"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def reading(path: Path):
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


def remove_when_unread(directory: Path) -> None:
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


def check_unchanged(target: Path, known: dict, replace: bool, count: int) -> None:
    """MapError unless the map at ``target`` (if any) is the version this process read or wrote
    (``known``: path -> revision); ``replace`` skips the check."""
    manifest = None if replace else map_manifest(target)
    if manifest is None:
        return
    if str(target) not in known:
        raise MapError(f"refusing to replace the map {target}: this process did not open or write it (nothing "
                       "was changed); to add to it open it first (build-map --append, the node's map_path), or "
                       "choose a new path")
    if known[str(target)] != revision_of(manifest):
        others = field(manifest, "num_places", int)
        raise MapError(f"the map {target} was changed by another process since it was read here (it now has "
                       f"{others} places, this copy {count}): nothing was saved, to lose neither; save to "
                       "a new path, or open the map again and add to that")


def check_writable(target: Path) -> None:
    """MapError naming the file when the map at ``target`` (its folder or a file in it) is
    write-protected, or its parent folder (where the new version is made) cannot be written."""
    try:
        check_not_protected(target, "the map")
    except PermissionError as exc:
        raise MapError(f"refusing to replace the map {target}: {exc.filename} {exc.strerror}") from None
    parent = target.parent
    while not parent.exists():  # the first folder that exists is where the map will be made
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MapError(f"cannot write the map {target}: {parent} is not writable")
    try:
        check_name(target, parent)
    except OSError as exc:
        raise MapError(f"cannot write the map {target}: {exc.strerror}") from None


def swap_in(target: Path, write: Callable[[Path], None]) -> None:
    """Write a new version with ``write(tmp)`` into a temporary folder beside ``target``, then put it in
    place atomically; on any failure nothing but the temporary is touched (and it goes)."""
    scratch = Scratch(target.parent, f"a new version of the map {target.name}")
    replaced = None
    try:
        write(scratch.path)
        scratch.unmark()  # the folder becomes the map
        if not target.exists():
            os.replace(scratch.path, target)
        elif exchange(scratch.path, target):
            replaced = scratch.path  # the temporary name now holds the old version: ours to remove
        else:  # no renameat2: the old version waits under a name no cleanup touches (it may be the only copy)
            replaced = sibling(target, ".", f".old-{os.getpid()}")
            os.replace(target, replaced)
            os.replace(scratch.path, target)
        fsync_directory(target.parent)
    except BaseException:
        shutil.rmtree(scratch.path, ignore_errors=True)
        raise
    finally:
        scratch.release(remove=False)  # its lock is on the new version's folder: readers may open it now
    if replaced == scratch.path:  # the new version is in place: what follows is cleanup, it cannot fail the save
        with contextlib.suppress(OSError):  # marked, so a crash before it is removed leaves nothing for good
            write_bytes(replaced / Scratch.MARKER, b'{"tool": "dhe_vpr_ros", "purpose": "a replaced map"}')
    if replaced is not None:
        remove_when_unread(replaced)


def clean_leftovers(target: Path) -> list[Path]:
    """Remove what killed writers of this package left beside ``target``: its temporary folders (marked
    as this package's, held by no living process); nothing else."""
    # (a ".NAME.old-PID" directory is never removed: without renameat2 it can be the only copy)
    removed = remove_stale(target.parent)
    if removed:
        log.info("removed %d leftovers of an interrupted map write: %s", len(removed),
                 ", ".join(p.name for p in removed))
    return removed
