# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The operating-system calls under the write door (``atomic``), kept apart from its policy: fsync, the
umask, flock, renameat2 and O_TMPFILE, and the fault hook every write of a file's bytes passes.

``DHE_VPR_ROS_FAULT`` (``N:ENOSPC``, ``N:EIO``, ``N:KILL``, ``N:TERM``) makes the Nth write of the process
fail or the process die there, so tests reach every write in turn (test/faults). ``atomic`` re-exports
everything here; callers import from there.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import re
import signal
import tempfile
from pathlib import Path

__all__ = ["exchange", "fsync_directory", "fsync_file", "guarded", "link_unnamed", "lock_exclusive", "umask_mode",
           "unnamed_tempfile", "write_bytes"]


# -- faults by construction --------------------------------------------------------------------
_FAULT = re.compile(r"^(\d+):(ENOSPC|EIO|EDQUOT|EROFS|KILL|TERM)$")
_writes = 0


def _fault() -> tuple[int, str] | None:
    spec = os.environ.get("DHE_VPR_ROS_FAULT", "")
    match = _FAULT.match(spec)
    return (int(match.group(1)), match.group(2)) if match else None


def _count_write() -> None:
    """One more write of file bytes; the fault of ``DHE_VPR_ROS_FAULT`` happens at the Nth."""
    global _writes
    _writes += 1
    fault = _fault()
    if fault is None or fault[0] != _writes:
        return
    what = fault[1]
    if what == "KILL":
        os.kill(os.getpid(), signal.SIGKILL)
    if what == "TERM":
        os.kill(os.getpid(), signal.SIGTERM)
        return
    code = getattr(errno, what)
    raise OSError(code, os.strerror(code))


class guarded:
    """A file object whose writes count for the fault hook (what ``atomic_write`` yields)."""

    def __init__(self, handle):
        self._handle = handle

    def write(self, data):
        _count_write()
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


def write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to a new file ``path`` inside a folder this process made (a ``Scratch``, a map being
    written): no replacement semantics, just the guarded write and the file's own fsync."""
    _count_write()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, umask_mode())
    try:
        view = memoryview(data).cast("B")
        while view.nbytes:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


# -- files, folders and locks --------------------------------------------------
def fsync_directory(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it (Linux), else by a set-and-restore."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(directory: bool = False) -> int:
    """The mode a new file (0666) or directory (0777) gets under the current umask."""
    return (0o777 if directory else 0o666) & ~_umask()


def lock_exclusive(fd: int) -> None:
    """An exclusive flock, or BlockingIOError at once when another holds it."""
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


# -- whole folders -------------------------------------------------------------------------------
def exchange(a: Path, b: Path) -> bool:
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


def unnamed_tempfile(directory: str | os.PathLike | None) -> int:
    """An fd of a file with no name in ``directory`` (O_TMPFILE): whatever happens to this
    process, nothing is left behind; ``link_unnamed`` gives it a name. OSError where the file
    system cannot (the caller then falls back to a file in a ``Scratch`` folder)."""
    flags = os.O_RDWR | getattr(os, "O_TMPFILE", 0)
    if not getattr(os, "O_TMPFILE", 0):
        raise OSError(errno.EOPNOTSUPP, "O_TMPFILE is not available here")
    return os.open(directory or tempfile.gettempdir(), flags, umask_mode())


def link_unnamed(fd: int, path: str | os.PathLike) -> None:
    """Give an ``unnamed_tempfile`` the name ``path`` (no copy): through /proc, else with
    linkat(AT_EMPTY_PATH); OSError where neither is allowed (the caller then copies)."""
    try:
        os.link(f"/proc/self/fd/{fd}", path, follow_symlinks=True)
        return
    except OSError as first:
        libc_name = ctypes.util.find_library("c")
        if libc_name is None:
            raise first
        libc = ctypes.CDLL(libc_name, use_errno=True)
        at_fdcwd, at_empty_path = -100, 0x1000
        if libc.linkat(fd, b"", at_fdcwd, os.fsencode(path), at_empty_path) != 0:
            raise first from None
