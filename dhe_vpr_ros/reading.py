# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The one door every input file is read through (``atomic`` is the one they are written through).

* Where a file is expected, only a regular file is read: a FIFO, a socket or a device is refused
  before anything can block on it (opened with ``O_NONBLOCK``, checked with ``fstat`` on the open
  descriptor, so a name swapped meanwhile changes nothing); where a folder is expected, a folder.
* Every read is bounded: a file larger than the caller allows is refused from its size.
* An image's size is read from its header, for every format OpenCV decodes here (PNG, JPEG, BMP,
  TIFF, WebP, AVIF, JPEG 2000, GIF, PBM/PGM/PPM/PAM, PFM, Sun raster, Radiance HDR), before it is
  decoded, so a 19 KB file declaring 20000 x 20000 pixels never allocates them. Data in any other
  format is refused: OpenCV would guess.

Errors are ``InputError`` (a ``ValueError``) with one line that names the path and the reason.
"""
from __future__ import annotations

import errno
import os
import re
import stat
import struct
from pathlib import Path

__all__ = ["MAX_INPUT_BYTES", "InputError", "check_directory", "image_dimensions", "input_mode", "open_regular",
           "read_bytes", "read_text", "reason"]

MAX_INPUT_BYTES = 1 << 30  # an image, a config or a manifest larger than this is not one


class InputError(ValueError):
    """An input that is not what it should be (not a regular file, too large, not an image we read)."""


REASONS = {errno.ENOENT: "not found", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
           errno.EISDIR: "is a folder", errno.ENOTDIR: "a part of the path is not a folder",
           errno.ENAMETOOLONG: "name too long", errno.ELOOP: "too many symbolic links", errno.EIO: "I/O error",
           errno.ENOSPC: "disk full", errno.EROFS: "read-only file system", errno.EDQUOT: "disk quota exceeded",
           errno.EMFILE: "too many open files", errno.EEXIST: "already exists",
           errno.ENXIO: "no process reads it (a FIFO without a reader)", errno.EPIPE: "its reader went away"}


def reason(exc: OSError) -> str:
    """A short reason for an OSError, the same words in every message."""
    return REASONS.get(exc.errno, exc.strerror or str(exc))


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path, what: str = "file", limit: int = MAX_INPUT_BYTES):
    """A binary file object of the regular file at ``path`` (at most ``limit`` bytes), opened without
    blocking; InputError naming ``path`` for anything else. FileNotFoundError where it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {reason(exc)}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"cannot read {what} {path}: it is {_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise InputError(f"cannot read {what} {path}: {info.st_size:,} bytes, more than the {limit:,} a {what} "
                             "may have")
        os.set_blocking(fd, True)  # a regular file: reads never wait on a writer
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path, what: str = "file", limit: int = MAX_INPUT_BYTES) -> bytes:
    """The whole regular file at ``path`` (see ``open_regular``)."""
    with open_regular(path, what, limit) as handle:
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise InputError(f"cannot read {what} {path}: {reason(exc)}") from None
    if len(data) > limit:  # it grew after its size was checked
        raise InputError(f"cannot read {what} {path}: more than the {limit:,} bytes a {what} may have")
    return data


def read_text(path, what: str = "file", limit: int = MAX_INPUT_BYTES) -> str:
    """A regular UTF-8 text file; InputError naming it when it is not UTF-8."""
    data = read_bytes(path, what, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"cannot read {what} {path}: not UTF-8 text (byte {exc.start})") from None


def input_mode(path, what: str) -> int:
    """``path``'s mode (links followed): FileNotFoundError naming ``what`` where it is absent, InputError
    where it cannot be looked at."""
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {reason(exc)}") from None


def check_directory(path, what: str = "folder") -> Path:
    """``path`` if it is a folder (links followed); InputError (FileNotFoundError where absent) otherwise."""
    mode = input_mode(path, what)
    if not stat.S_ISDIR(mode):
        raise InputError(f"{what} {path} is {_kind(mode) if not stat.S_ISREG(mode) else 'a file'}, not a folder")
    return Path(path)


# -- image headers -----------------------------------------------------------------------------
def _png(d: bytes):
    if d.startswith(b"\x89PNG\r\n\x1a\n") and len(d) >= 24:
        return struct.unpack(">II", d[16:24])


def _jpeg(d: bytes):
    if not d.startswith(b"\xff\xd8"):
        return None
    i = 2
    while i + 9 < len(d):
        if d[i] != 0xFF:
            i += 1
            continue
        marker = d[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame segment
            height, width = struct.unpack(">HH", d[i + 5:i + 9])
            return width, height
        i += 2 + int.from_bytes(d[i + 2:i + 4], "big")
    raise InputError("JPEG data without a frame header (truncated?)")


def _bmp(d: bytes):
    if not d.startswith(b"BM") or len(d) < 26:
        return None
    if struct.unpack("<I", d[14:18])[0] == 12:  # BITMAPCOREHEADER
        return struct.unpack("<HH", d[18:22])
    width, height = struct.unpack("<ii", d[18:26])
    return abs(width), abs(height)


def _tiff(d: bytes):
    if d[:4] not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return None
    e = "<" if d[:2] == b"II" else ">"
    big = d[2:4] in (b"+\x00", b"\x00+")
    if big:
        (offset,) = struct.unpack(e + "Q", d[8:16])
        count_fmt, entry, value_at = "Q", 20, 12
    else:
        (offset,) = struct.unpack(e + "I", d[4:8])
        count_fmt, entry, value_at = "H", 12, 8
    size = struct.calcsize(count_fmt)
    if offset + size > len(d):
        raise InputError("TIFF data whose first image directory lies beyond the file (truncated?)")
    (count,) = struct.unpack(e + count_fmt, d[offset:offset + size])
    found = {}
    for n in range(min(count, 4096)):
        at = offset + size + n * entry
        if at + entry > len(d):
            break
        tag, kind = struct.unpack(e + "HH", d[at:at + 4])
        if tag in (256, 257):
            raw = d[at + value_at:at + value_at + (8 if big else 4)]
            found[tag] = struct.unpack(e + ("H" if kind == 3 else "Q" if kind == 16 else "I"),
                                       raw[:2 if kind == 3 else 8 if kind == 16 else 4])[0]
    if 256 not in found or 257 not in found:
        raise InputError("TIFF data without an image width and length in its first directory")
    return found[256], found[257]


def _webp(d: bytes):
    if not (d.startswith(b"RIFF") and d[8:12] == b"WEBP") or len(d) < 30:
        return None
    chunk = d[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", d[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = int.from_bytes(d[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(d[24:27], "little") + 1, int.from_bytes(d[27:30], "little") + 1
    raise InputError(f"WebP data with an unknown first chunk {chunk!r}")


def _boxes(d: bytes, start: int, end: int):
    """ISO base media boxes (type, payload start, end) between ``start`` and ``end``."""
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack(">I4s", d[i:i + 8])
        head = 8
        if size == 1 and i + 16 <= end:
            size, head = struct.unpack(">Q", d[i + 8:i + 16])[0], 16
        size = end - i if size == 0 else size
        if size < head:
            return
        yield kind, i + head, min(i + size, end)
        i += size


def _find_box(d: bytes, path: list[bytes], start: int, end: int, skip: dict):
    for kind, body, stop in _boxes(d, start, end):
        if kind == path[0]:
            return (body, stop) if len(path) == 1 else _find_box(d, path[1:], body + skip.get(kind, 0), stop, skip)
    return None


def _avif(d: bytes):
    if d[4:8] != b"ftyp" or not any(b in d[8:64] for b in (b"avif", b"avis", b"mif1", b"heic")):
        return None
    found = _find_box(d, [b"meta", b"iprp", b"ipco", b"ispe"], 0, len(d), {b"meta": 4})
    if found is None:
        raise InputError("AVIF data without an image size (ispe) box")
    return struct.unpack(">II", d[found[0] + 4:found[0] + 12])


def _jpeg2000(d: bytes):
    if d.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n"):
        found = _find_box(d, [b"jp2h", b"ihdr"], 0, len(d), {})
        if found is None:
            raise InputError("JPEG 2000 data without an image header box")
        height, width = struct.unpack(">II", d[found[0]:found[0] + 8])
        return width, height
    if d.startswith(b"\xff\x4f\xff\x51") and len(d) >= 24:  # a raw codestream: its SIZ segment
        xsiz, ysiz, xo, yo = struct.unpack(">IIII", d[8:24])
        return xsiz - xo, ysiz - yo


def _gif(d: bytes):
    if d[:6] in (b"GIF87a", b"GIF89a") and len(d) >= 10:
        return struct.unpack("<HH", d[6:10])


_PNM = re.compile(rb"\A(P[1-6]|PF|Pf)((?:\s+|#[^\n]*\n)+)(\d+)((?:\s+|#[^\n]*\n)+)(\d+)")


def _pnm(d: bytes):
    if d[:2] == b"P7":  # PAM: WIDTH and HEIGHT lines
        head = d[:4096]
        width, height = re.search(rb"\nWIDTH\s+(\d+)", head), re.search(rb"\nHEIGHT\s+(\d+)", head)
        if not (width and height):
            raise InputError("PAM data without WIDTH and HEIGHT")
        return int(width.group(1)), int(height.group(1))
    match = _PNM.match(d[:4096])
    if match:
        return int(match.group(3)), int(match.group(5))
    if d[:1] == b"P" and d[1:2] in b"123456Ff":
        raise InputError("PNM data without a width and height")


def _sunraster(d: bytes):
    if d[:4] == b"\x59\xa6\x6a\x95" and len(d) >= 12:
        return struct.unpack(">II", d[4:12])


def _hdr(d: bytes):
    if not (d.startswith(b"#?RADIANCE") or d.startswith(b"#?RGBE")):
        return None
    match = re.search(rb"\n\s*\n([-+][YX])\s+(\d+)\s+([-+][YX])\s+(\d+)", d[:8192])
    if not match:
        raise InputError("Radiance HDR data without a resolution line")
    first, second = int(match.group(2)), int(match.group(4))
    return (second, first) if match.group(1).endswith(b"Y") else (first, second)


FORMATS = (("PNG", _png), ("JPEG", _jpeg), ("BMP", _bmp), ("TIFF", _tiff), ("WebP", _webp), ("AVIF", _avif),
           ("JPEG 2000", _jpeg2000), ("GIF", _gif), ("PNM", _pnm), ("Sun raster", _sunraster), ("HDR", _hdr))


def image_dimensions(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) from the header of image ``data``; InputError for data in no format
    listed in ``FORMATS`` (what OpenCV decodes here), or whose header is cut short."""
    head = bytes(data)
    for name, parse in FORMATS:
        try:
            found = parse(head)
        except (struct.error, IndexError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"{name} data whose header is cut short") from None
        if found is not None:
            width, height = (int(v) for v in found)
            return name, width, height
    raise InputError("not an image in a format this package reads (" + ", ".join(n for n, _ in FORMATS) + ")")
