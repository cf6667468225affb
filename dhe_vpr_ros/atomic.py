# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Crash-safe writes: temporary files and directories beside the target, fsync, rename.

Temporaries carry an exclusive ``flock`` for as long as their writer lives, so leftovers of a
killed writer are told from a live one's by trying the lock (``remove_stale``). What is
written gets the permissions the user's umask gives (0644 / 0755 under 022), not the 0600
of ``mkstemp``.

``writer_lock`` serialises the writers of one target across processes: an exclusive ``flock``
on a sibling ``.NAME.lock`` file (a stable inode: the target itself is swapped on every write),
held for a whole read-modify-write, re-entrant within a process. ``unnamed_tempfile`` makes
scratch files that have no name until they are linked: a killed process leaves nothing.
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
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["LockTimeout", "atomic_write", "exchange", "fsync_directory", "link_unnamed", "locked_tempdir",
           "locked_tempfile", "release_writer_lock", "remove_stale", "try_writer_lock", "umask_mode",
           "unnamed_tempfile", "writer_lock"]

log = logging.getLogger(__name__)


class LockTimeout(TimeoutError):
    """Another process held the writer lock for longer than we were told to wait."""


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


def _lock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Yield a file object; on success it replaces ``path`` atomically, on error ``path`` is
    untouched. A failure of the file system (full disk, a directory in the way, no permission)
    is an OSError that names ``path``."""
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(target))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = locked_tempfile(target.parent, f".{target.name}.", ".tmp")
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from None
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
        _lock(fd)
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
    _lock(fd)
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
            fd = os.open(entry, os.O_RDONLY)
        except OSError:
            continue
        try:
            _lock(fd)  # raises while the writer lives
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


_HELD: dict[str, list] = {}  # lock file -> [fd, depth]: this process's writer locks
_HELD_GUARD = threading.Lock()


def lock_path(target: str | os.PathLike) -> Path:
    target = Path(target).resolve()
    return target.parent / f".{target.name}.lock"


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
    """An fd holding the flock of the lock file that is at ``path`` now, or None if it is taken."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, umask_mode())
        try:
            _lock(fd)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
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
        return f"process {int(path.read_text().strip())}"
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
