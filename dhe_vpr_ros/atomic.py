# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The one door every file and folder the package writes goes through (``reading`` is the one for reading).

* **Where it goes** (``resolve_output``): the path is resolved once (``os.path.realpath``: ``/dev/..``,
  relative parts and links in the folders above all end in one real path). Only ``-``, the process's own
  descriptors (``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N``) and what ``stat`` says is a character
  device, a FIFO or a socket are written as a stream, in place; everything else is a file, replaced
  atomically, never written through a symbolic link, never a folder, never write-protected.
* **Before the work** (``check_output``): the checks above, the name's length against the file system's
  limit, the caller's ownership rule (``owned``: a file the command did not write is never replaced) and,
  where the size is known, the free space: a run that would fail at its end fails before it starts.
* **Temporaries** (``Scratch``): a folder with a short random name (``.dhe_vpr_ros-XXXX.tmp``, whatever the
  target's name), a marker file only this package writes, and an exclusive lock held while its writer
  lives. ``remove_stale`` removes only such folders whose writer is gone: never a file or folder by its
  name alone. A file is written into one, fsynced, renamed over its target, the folder removed.
* **Errors**: every ``OSError`` becomes a ``WriteError`` (an ``OSError``) whose one line names the path and
  the reason in plain words ("disk full", "read-only file system", "name too long").
* **Faults by construction**: every write of a file's bytes goes through ``write_bytes`` or a ``guarded``
  file, where the fault hook of ``syscalls`` can make it fail, so tests reach every write in turn.

What is written gets the permissions the user's umask gives (0644 / 0755 under 022). (The writer lock
that serialises the writers of one target is ``locks``.)
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .reading import InputError, read_bytes, reason
from .syscalls import (exchange, fsync_directory, fsync_file, guarded, link_unnamed, lock_exclusive, umask_mode,
                       unnamed_tempfile, write_bytes)

__all__ = ["Output", "Scratch", "WriteError", "atomic_write", "check_free_space", "check_name", "check_not_protected",
           "check_output", "exchange", "fsync_directory", "fsync_file", "guarded", "is_stream", "link_unnamed",
           "lock_exclusive", "refuse_link", "remove_stale", "resolve_output", "sibling", "umask_mode",
           "unnamed_tempfile", "write_bytes", "write_error"]

log = logging.getLogger(__name__)


class WriteError(OSError):
    """A file the package could not write: one line, naming the path and the reason."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def write_error(path, exc: OSError, doing: str = "") -> WriteError:
    """``exc`` as a WriteError naming ``path`` (and the part that failed, where it is another path)."""
    if isinstance(exc, WriteError):
        return exc
    words = reason(exc) if exc.errno is not None else str(exc)
    other = exc.filename if exc.filename and str(exc.filename) != str(path) else None
    detail = f"{words}" + (f" ({other})" if other else "") + (f", {doing}" if doing else "")
    return WriteError(exc.errno or errno.EIO, detail, str(path))


# -- where an output goes ------------------------------------------------------------------------
_OWN_DESCRIPTORS = re.compile(r"^/(?:dev/(?:stdout|stderr|fd/\d+)|proc/self/fd/\d+)$")


@dataclass(frozen=True)
class Output:
    """An output as resolved: ``path`` the real path of a file (``given`` as the user wrote it), or a
    stream (``-``, an own descriptor, a device, a FIFO or a socket) written in place."""

    given: str
    path: Path
    stream: bool


def resolve_output(path: str | os.PathLike) -> Output:
    """Where ``path`` really goes (see the module's docstring); WriteError where it cannot be looked at."""
    given = os.fsdecode(path)
    if given == "-" or _OWN_DESCRIPTORS.match(given):
        return Output(given, Path(given), True)
    try:
        mode = os.stat(given).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    except OSError as exc:
        raise write_error(given, exc) from None
    if mode is not None and (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return Output(given, Path(given), True)
    return Output(given, Path(os.path.realpath(given)), False)


def is_stream(path: str | os.PathLike) -> bool:
    """Whether ``path`` is written as a stream, in place (``resolve_output``), never replaced."""
    return resolve_output(path).stream


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


def _existing_parent(target: Path) -> Path:
    parent = target.parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent
    return parent


def check_free_space(where: str | os.PathLike, size: int, target: str | os.PathLike | None = None) -> None:
    """WriteError (disk full) unless the file system of ``where`` has ``size`` bytes free, with a margin."""
    folder = _existing_parent(Path(where) / "x")
    try:
        info = os.statvfs(folder)
    except OSError:
        return
    free = info.f_bavail * info.f_frsize
    needed = int(size * 1.05) + (1 << 20)
    if free < needed:
        raise WriteError(errno.ENOSPC, f"disk full: {needed / 1e6:.1f} MB needed, {free / 1e6:.1f} MB free on "
                         f"{folder}; nothing was written", str(target or where))


def refuse_link(path: str | os.PathLike, what: str = "") -> None:
    """WriteError when ``path`` itself is a symbolic link: an output is never written through one."""
    if os.path.islink(path):
        raise WriteError(errno.ELOOP, f"is a symbolic link (to {os.readlink(path)}), not {what or 'a file'}: give "
                         "its own path, or remove the link; nothing was written", os.fsdecode(path))


def check_output(path: str | os.PathLike, owned: Callable[[Path], bool] | None = None,
                 size: int | None = None) -> None:
    """The checks ``atomic_write`` makes, before any work: OSError naming the path when ``path``
    could not be written (a link, a folder, write-protected, a name too long, under a file, an
    unwritable folder, not ``owned`` by the command, too little free space for ``size`` bytes)."""
    out = resolve_output(path)
    if out.stream:
        return
    given = Path(out.given)
    refuse_link(given)
    target = out.path
    if target.is_dir():
        raise WriteError(errno.EISDIR, "is a folder, not a file", str(given))
    try:
        check_not_protected(target)
    except PermissionError as exc:
        raise WriteError(exc.errno, exc.strerror, exc.filename) from None
    if target.exists() and owned is not None and not owned(target):
        raise WriteError(errno.EEXIST, "was not written by dhe_vpr_ros: refusing to replace it (nothing was "
                         "changed); choose a new file name", str(given))
    parent = _existing_parent(target)
    if not parent.is_dir():
        raise WriteError(errno.ENOTDIR, f"is not a folder, so {given} cannot be made in it", str(parent))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise WriteError(errno.EACCES, f"{parent} is not writable; nothing was written", str(given))
    check_name(target, parent)
    if size is not None:
        check_free_space(parent, size, given)


def sibling(target: str | os.PathLike, prefix: str, suffix: str) -> Path:
    """``prefix + name + suffix`` beside ``target`` (a lock, an old version); where that would pass the
    255-byte limit of a name (a legal 250-byte target), the name's first 200 bytes and a hash of it, so
    every process finds the same sibling for one target."""
    target = Path(target)
    name = os.fsencode(target.name)
    if len(name) + len(prefix) + len(suffix) > 255:
        name = name[:200] + b"-" + hashlib.sha256(name).hexdigest()[:16].encode()
    return target.parent / os.fsdecode(prefix.encode() + name + suffix.encode())


def check_name(target: Path, parent: Path | None = None) -> None:
    """WriteError (name too long) when ``target``'s name or path exceeds its file system's limits."""
    parent = parent or _existing_parent(target)
    try:
        name_max, path_max = os.pathconf(parent, "PC_NAME_MAX"), os.pathconf(parent, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    name = len(os.fsencode(target.name))
    if name > name_max or len(os.fsencode(str(target))) >= path_max:
        raise WriteError(errno.ENAMETOOLONG, f"name too long ({name} bytes; {name_max} at most here); nothing "
                         "was written", str(target))


# -- temporaries ---------------------------------------------------------------------------------
class Scratch:
    """A temporary folder of this package's beside a target (see the module's docstring). ``path`` holds
    the work; ``release()`` removes it, ``unmark()`` drops the marker just before the folder itself is
    renamed into place (a map's new version)."""

    PREFIX, SUFFIX, MARKER = ".dhe_vpr_ros-", ".tmp", ".dhe_vpr_ros-temporary"

    def __init__(self, parent: str | os.PathLike, purpose: str):
        parent = Path(parent)
        for _ in range(100):
            path = parent / f"{self.PREFIX}{secrets.token_hex(6)}{self.SUFFIX}"
            try:
                os.mkdir(path, 0o700)
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 100 collisions of 48 random bits
            raise WriteError(errno.EEXIST, "no free temporary name", str(parent))
        try:
            os.chmod(path, umask_mode(directory=True))
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            lock_exclusive(self.fd)
            record = {"tool": "dhe_vpr_ros", "pid": os.getpid(), "purpose": purpose}
            write_bytes(path / self.MARKER, json.dumps(record).encode())
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        self.path = path

    def unmark(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path / self.MARKER)

    def release(self, remove: bool = True) -> None:
        """Remove the folder (what is left in it) and drop the lock."""
        if remove:
            shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.close(self.fd)

    NAME = re.compile(r"^\.dhe_vpr_ros-[0-9a-f]{12}\.tmp$")

    @classmethod
    def is_ours(cls, path: Path) -> bool:
        """Whether ``path`` is a folder this package made as a temporary: its name and its marker (or, killed
        before the marker was written, its name and nothing in it: an empty folder loses nothing)."""
        if not cls.NAME.match(path.name) or path.is_symlink() or not path.is_dir():
            return False
        try:
            if not any(os.scandir(path)):
                return True
        except OSError:
            return False
        try:  # through the read door: a FIFO put where the marker should be must not block this
            record = json.loads(read_bytes(path / cls.MARKER, "temporary marker", 4096))
        except (OSError, InputError, ValueError):
            return False
        return isinstance(record, dict) and record.get("tool") == "dhe_vpr_ros"


def remove_stale(directory: str | os.PathLike) -> list[Path]:
    """Remove this package's temporaries (``Scratch`` folders) in ``directory`` whose writer is gone (their
    lock can be taken); a live writer's, and anything without the package's marker, are left alone."""
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return []
    removed = []
    for entry in entries:
        if not Scratch.is_ours(entry):
            continue
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            lock_exclusive(fd)  # raises while the writer lives
        except OSError:
            os.close(fd)
            continue
        try:
            shutil.rmtree(entry)
            removed.append(entry)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


# -- writing a file ------------------------------------------------------------------------------
@contextlib.contextmanager
def _stream(out: Output, mode: str):
    """Write to stdout (``-``), an own descriptor, or a device / FIFO / socket, in place."""
    name = "standard output" if out.given == "-" else out.given
    try:
        if out.given == "-":
            sys.stdout.flush()
            handle = os.fdopen(os.dup(sys.stdout.fileno()), mode)
        else:  # non-blocking open: a FIFO nobody reads is an error (ENXIO), not a hang
            fd = os.open(out.given, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_APPEND if "a" in mode else 0))
            os.set_blocking(fd, True)
            handle = os.fdopen(fd, mode)
        with handle:
            yield guarded(handle)
            handle.flush()
    except OSError as exc:
        raise write_error(name, exc) from None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", owned: Callable[[Path], bool] | None = None,
                 size: int | None = None):
    """Yield a file object; on success it replaces ``path`` atomically, on error ``path`` is untouched
    and nothing is left beside it. Streams (``resolve_output``) are written in place. Every check of
    ``check_output`` is made first; a failure of the file system is a WriteError naming ``path``."""
    out = resolve_output(path)
    if out.stream:
        with _stream(out, mode) as handle:
            yield handle
        return
    check_output(path, owned, size)
    target = out.path
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(target.parent)
        scratch = Scratch(target.parent, target.name)
    except OSError as exc:
        raise write_error(out.given, exc) from None
    try:
        data = scratch.path / "data"
        with open(data, mode) as handle:
            yield guarded(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(data, umask_mode())
        os.replace(data, target)
        fsync_directory(target.parent)
    except OSError as exc:
        raise write_error(out.given, exc) from None
    finally:
        scratch.release()
