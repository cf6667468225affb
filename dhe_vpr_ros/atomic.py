# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Crash-safe writes: temporary files and directories beside the target, fsync, rename.

Temporaries carry an exclusive ``flock`` for as long as their writer lives, so leftovers of a
killed writer are told from a live one's by trying the lock (``remove_stale``). What is
written gets the permissions the user's umask gives (0644 / 0755 under 022), not the 0600
of ``mkstemp``.

What the user protected stays protected: a write-protected target is refused even where a
rename in its parent would succeed; special files (``-``, /dev/stdout, a FIFO) are written as
streams, never replaced; a symbolic link is never written through. ``unnamed_tempfile`` makes
scratch files that have no name until they are linked: a killed process leaves nothing. (The
writer lock that serialises the writers of one target is ``locks``.)
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "check_not_protected", "check_output", "exchange", "fsync_directory", "is_stream",
           "link_unnamed", "lock_exclusive", "locked_tempdir", "locked_tempfile", "remove_stale", "umask_mode",
           "unnamed_tempfile"]

log = logging.getLogger(__name__)


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


def check_not_protected(path: str | os.PathLike, what: str = "") -> None:
    """PermissionError naming the file when ``path`` (or, for a directory, anything directly in
    it) is write-protected: not writable by this user, or with no write bit at all, which root is
    refused too. A rename in a writable parent would replace it anyway: that is not ours to do."""
    path = Path(path)
    entries = [path]
    if path.is_dir() and not path.is_symlink():
        with contextlib.suppress(OSError):
            entries += sorted(path.iterdir())
    for entry in entries:
        try:
            mode = os.lstat(entry).st_mode
        except OSError:
            continue
        if stat.S_ISLNK(mode):
            continue
        if not mode & 0o222 or not os.access(entry, os.W_OK, follow_symlinks=False):
            target = f"{what} {path}" if what else str(path)
            raise PermissionError(errno.EACCES, f"is write-protected (chmod u+w it to let {target} be replaced); "
                                  "nothing was changed", str(entry))


def is_stream(path: str | os.PathLike) -> bool:
    """``-``, or a path that is (or leads to) no regular file: a terminal, /dev/null, /dev/full, a
    pipe or FIFO, /dev/stdout. Such a path is written to as it is, never replaced."""
    if str(path) == "-":
        return True
    path = Path(path)
    if str(path).startswith(("/dev/", "/proc/")):
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


@contextlib.contextmanager
def _stream(path: str | os.PathLike, mode: str):
    """Write to stdout (``-``) or an existing special file; an error of the file names it."""
    name = "standard output" if str(path) == "-" else str(path)
    try:
        if str(path) == "-":
            handle = os.fdopen(os.dup(sys.stdout.fileno()), mode)
            sys.stdout.flush()
        else:
            handle = open(path, mode)
        with handle:
            yield handle
            handle.flush()
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), name) from None


def check_output(path: str | os.PathLike) -> None:
    """The checks ``atomic_write`` makes, before any work: OSError naming the path when ``path``
    could not be written (a directory, a link, write-protected, under a file, an unwritable folder)."""
    if is_stream(path):
        return
    target = Path(path)
    if target.is_symlink():
        raise OSError(errno.ELOOP, f"is a symbolic link (to {os.readlink(target)}), not a file: give the file's own "
                      "path, or remove the link; nothing was written", str(target))
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(target))
    check_not_protected(target)
    parent = target.parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"is not a folder, so {target} cannot be made in it", str(parent))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"is not writable, so {target} cannot be made in it", str(parent))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Yield a file object; on success it replaces ``path`` atomically, on error ``path`` is
    untouched. ``-`` and special files (``is_stream``) are written as streams, never replaced;
    a symbolic link or a write-protected file is refused. A failure of the file system (full
    disk, a directory in the way, no permission) is an OSError that names ``path``."""
    if is_stream(path):
        with _stream(path, mode) as handle:
            yield handle
        return
    target = Path(path)
    check_output(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = locked_tempfile(target.parent, f".{target.name}.", ".tmp")
    except OSError as exc:
        where = exc.filename if exc.filename and str(exc.filename) != str(target) else target.parent
        raise OSError(exc.errno, f"{exc.strerror or exc} (writing {target})", str(where)) from None
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        fsync_directory(target.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from None
        raise


def locked_tempfile(directory: str | os.PathLike | None, prefix: str, suffix: str) -> tuple[int, str]:
    """(fd, path) of a new file, locked for as long as ``fd`` is open, umask permissions."""
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    try:
        lock_exclusive(fd)
        os.fchmod(fd, umask_mode())
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return fd, path


def locked_tempdir(parent: str | os.PathLike, prefix: str) -> tuple[Path, int]:
    """(path, lock fd) of a new directory, locked until the fd is closed, umask permissions."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(path, umask_mode(directory=True))
    fd = os.open(path, os.O_RDONLY)
    lock_exclusive(fd)
    return path, fd


def remove_stale(directory: str | os.PathLike, prefix: str, suffix: str = "") -> list[Path]:
    """Remove temporaries (files or directories) named ``prefix*suffix`` in ``directory`` whose
    writer is gone: their lock can be taken. A live writer's are left alone. Returns what went."""
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return []
    removed = []
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(suffix)):
            continue
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # gone, or a link: not a temporary of ours
            continue
        try:
            lock_exclusive(fd)  # raises while the writer lives
        except OSError:
            os.close(fd)
            continue
        try:
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


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
    system cannot (the caller then falls back to a named, locked temporary)."""
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
