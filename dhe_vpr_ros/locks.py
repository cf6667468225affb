# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""One writer at a time per target, across processes.

``writer_lock`` is an exclusive ``flock`` on a sibling ``.NAME.lock`` file (a stable inode: the
target itself is swapped on every write), held for a whole read-modify-write, re-entrant within
a process; a waiting writer says once who holds it and gives up after a timeout. The lock file
is opened without following links and must be a regular file: a link or a special file there
is refused, never written through. It is removed on release (a waiter then finds its inode gone
and retries), so no stale lock file can block anyone.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
import time
from pathlib import Path

from .atomic import lock_exclusive, sibling, umask_mode, write_error
from .reading import read_bytes

__all__ = ["LockTimeout", "lock_path", "release_writer_lock", "try_writer_lock", "writer_lock"]

log = logging.getLogger(__name__)


class LockTimeout(TimeoutError):
    """Another process held the writer lock for longer than we were told to wait."""


_HELD: dict[str, list] = {}  # lock file -> [fd, depth]: this process's writer locks
_HELD_GUARD = threading.Lock()


def lock_path(target: str | os.PathLike) -> Path:
    """``.NAME.lock`` beside the target (a shortened name for a long one: ``atomic.sibling``)."""
    return sibling(Path(target).resolve(), ".", ".lock")


@contextlib.contextmanager
def writer_lock(target: str | os.PathLike, timeout: float = 60.0, what: str = "the map"):
    """Hold the exclusive writer lock of ``target`` (waiting at most ``timeout`` seconds, saying
    so once); LockTimeout when another process keeps it longer. Re-entrant in a process. The
    lock file is removed again on release (a waiter then finds its inode gone and retries)."""
    path = lock_path(target)
    key = str(path)
    with _HELD_GUARD:
        held = key in _HELD
        if held:
            _HELD[key][1] += 1
    if held:
        try:
            yield
        finally:
            with _HELD_GUARD:
                _HELD[key][1] -= 1
        return
    fd = _acquire(path, timeout, f"{what} {Path(target)}")
    try:
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        with _HELD_GUARD:
            _HELD[key] = [fd, 1]
        try:
            yield
        finally:
            with _HELD_GUARD:
                del _HELD[key]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    finally:
        os.close(fd)  # releases the flock


def _open_locked(path: Path, blocking_ok: bool = False) -> int | None:
    """An fd holding the flock of the lock file that is at ``path`` now, or None if it is taken.
    The lock file is never a link or a special file: such a thing there is refused, named."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, umask_mode())
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OSError(errno.ELOOP, "the writer lock's file is a symbolic link: refusing to write through "
                              "it (remove the link)", str(path)) from None
            raise write_error(path, exc, "the writer lock's file") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EEXIST, "is not a regular file, so not a writer lock this package made: move it "
                          "away", str(path))
        try:
            lock_exclusive(fd)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # its holder removed it while we waited: take the new one


def _acquire(path: Path, timeout: float, what: str) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    told = False
    while True:
        fd = _open_locked(path)
        if fd is not None:
            return fd
        holder = _read_holder(path)
        if time.monotonic() >= deadline:
            raise LockTimeout(f"{what} is being written by {holder}; waited {timeout:g} s for it: try again "
                              "when it is done (or allow a longer wait, e.g. --lock-timeout)")
        if not told:
            log.warning("waiting for %s: %s is writing it (up to %g s)", what, holder, timeout)
            told = True
        time.sleep(0.05)


def _read_holder(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f"process {int(read_bytes(path, 'writer lock', 64).strip())}"
    return "another process"


def try_writer_lock(target: str | os.PathLike) -> int | None:
    """The writer lock of ``target`` if nobody holds it now (an fd: pass it to
    ``release_writer_lock``), else None (also where the lock cannot be made, e.g. read-only media)."""
    path = lock_path(target)
    if str(path) in _HELD:
        return None  # this process is writing it
    try:
        return _open_locked(path)
    except OSError:
        return None


def release_writer_lock(target: str | os.PathLike, fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock_path(target))
    os.close(fd)
