# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""sensor_msgs Image / CompressedImage <-> numpy, with cv_bridge's semantics, without ROS.

Works on anything with the message's fields (rclpy messages, ``rosbags`` messages), so the
node and ``build-map --bag`` share one conversion. Every failure is an ``ImageConversionError``
whose message says what is wrong, for a log line rather than a crash.

Output of ``to_rgb`` is always an RGB uint8 (H, W, 3) array, what the backbone consumes.
"""
from __future__ import annotations

import cv2
import numpy as np

from .reading import InputError, image_dimensions, read_bytes

__all__ = ["COMPRESSED_FORMATS", "MAX_PIXELS", "MIN_SIDE", "SUPPORTED_ENCODINGS", "ImageConversionError",
           "check_pixels", "check_usable", "compressed_dimensions", "compressed_to_rgb", "decode_file",
           "encode_compressed", "mosaic", "raw_to_rgb", "read_image", "rgb_to_fields", "to_rgb"]


class ImageConversionError(ValueError):
    """An image message that cannot be turned into pixels; the message says why."""


# encoding -> (channels, numpy dtype, conversion from the raw array to RGB)
_BAYER = {  # ROS names the 2x2 pattern from the top-left; OpenCV from the second row/column
    "bayer_rggb8": cv2.COLOR_BayerBG2RGB,
    "bayer_bggr8": cv2.COLOR_BayerRG2RGB,
    "bayer_gbrg8": cv2.COLOR_BayerGR2RGB,
    "bayer_grbg8": cv2.COLOR_BayerGB2RGB,
}
_LAYOUT = {
    "mono8": (1, np.uint8), "8UC1": (1, np.uint8),
    "mono16": (1, np.uint16), "16UC1": (1, np.uint16),
    "rgb8": (3, np.uint8), "bgr8": (3, np.uint8), "8UC3": (3, np.uint8),
    "rgba8": (4, np.uint8), "bgra8": (4, np.uint8), "8UC4": (4, np.uint8),
    "yuv422": (2, np.uint8), "uyvy": (2, np.uint8), "yuv422_yuy2": (2, np.uint8), "yuyv": (2, np.uint8),
    **{name: (1, np.uint8) for name in _BAYER},
}
SUPPORTED_ENCODINGS = tuple(_LAYOUT)
COMPRESSED_FORMATS = ("jpeg", "png")
MAX_PIXELS = 50_000_000  # larger than any robot camera: a bigger frame is a bad message, not decoded


def compressed_dimensions(buffer: np.ndarray) -> tuple[int, int]:
    """(width, height) from the header of compressed image data, without decoding, for every format
    OpenCV decodes (``reading.image_dimensions``); ImageConversionError for anything else."""
    try:
        _, width, height = image_dimensions(buffer[:1 << 20].tobytes() if buffer.size > 1 << 20 and
                                            not _needs_whole(buffer) else buffer.tobytes())
    except InputError as exc:
        raise ImageConversionError(f"cannot decode compressed image: {exc}") from None
    return width, height


def _needs_whole(buffer: np.ndarray) -> bool:
    """TIFF keeps its image directory anywhere in the file, and a JPEG's frame header follows its APPn
    segments, which an embedded ICC profile or XMP packet can make megabytes long: their headers need all
    of the data (the JPEG parser only steps over segment lengths)."""
    return buffer[:4].tobytes() in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+") or \
        buffer[:2].tobytes() == b"\xff\xd8"


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageConversionError(f"image is {width}x{height} = {width * height / 1e6:.1f} MP, over the limit of "
                                   f"{max_pixels / 1e6:g} MP (max_image_pixels): not decoded")


def _to_rgb(raw: np.ndarray, encoding: str) -> np.ndarray:
    if encoding in ("mono8", "8UC1"):
        return cv2.cvtColor(raw, cv2.COLOR_GRAY2RGB)
    if encoding in ("mono16", "16UC1"):  # cv_bridge's 16 -> 8 bit: scale by 255 / 65535
        return cv2.cvtColor(np.round(raw.astype(np.float32) / 257.0).astype(np.uint8), cv2.COLOR_GRAY2RGB)
    if encoding == "rgb8":
        return raw.copy()
    if encoding in ("bgr8", "8UC3"):
        return cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
    if encoding == "rgba8":
        return cv2.cvtColor(raw, cv2.COLOR_RGBA2RGB)
    if encoding in ("bgra8", "8UC4"):
        return cv2.cvtColor(raw, cv2.COLOR_BGRA2RGB)
    if encoding in ("yuv422", "uyvy"):
        return cv2.cvtColor(raw, cv2.COLOR_YUV2RGB_UYVY)
    if encoding in ("yuv422_yuy2", "yuyv"):
        return cv2.cvtColor(raw, cv2.COLOR_YUV2RGB_YUYV)
    return cv2.cvtColor(raw, _BAYER[encoding])


def _conversion_guard(what: str):
    """Turn anything OpenCV or NumPy raise on a malformed message into ImageConversionError,
    so that callers handle exactly one exception type (a fuzz test holds us to it)."""
    def wrap(fn):
        def guarded(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ImageConversionError:
                raise
            except (cv2.error, ValueError, TypeError, OverflowError, MemoryError, IndexError) as exc:
                first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                raise ImageConversionError(f"cannot convert {what}: {first}") from None
        guarded.__doc__, guarded.__name__ = fn.__doc__, fn.__name__
        return guarded
    return wrap


@_conversion_guard("image")
def raw_to_rgb(encoding: str, height: int, width: int, step: int, is_bigendian: bool,
               data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Decode the fields of a sensor_msgs/Image into RGB uint8, honouring ``step`` padding
    and the byte order of 16-bit encodings."""
    if encoding not in _LAYOUT:
        raise ImageConversionError(f"unsupported encoding {encoding!r} (supported: "
                                   f"{', '.join(SUPPORTED_ENCODINGS)})")
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"empty image ({width}x{height})")
    channels, dtype = _LAYOUT[encoding]
    if channels == 2 and width % 2:
        raise ImageConversionError(f"{encoding} packs two pixels per colour sample: width {width} must be even")
    if encoding in _BAYER and (width < 2 or height < 2):
        raise ImageConversionError(f"{encoding} needs at least 2x2 pixels, not {width}x{height}")
    row_bytes = width * channels * np.dtype(dtype).itemsize
    if step < row_bytes:
        raise ImageConversionError(f"step {step} is smaller than one row of {width} {encoding} "
                                   f"pixels ({row_bytes} bytes)")
    buffer = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8).ravel()
    if buffer.size < step * height:
        raise ImageConversionError(f"data has {buffer.size} bytes, expected step*height = "
                                   f"{step}*{height} = {step * height} (truncated message)")
    rows = buffer[:step * height].reshape(height, step)[:, :row_bytes]
    order = ">" if is_bigendian else "<"
    raw = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(order) if np.dtype(dtype).itemsize > 1
                                          else dtype)
    raw = raw.reshape(height, width, channels).astype(dtype, copy=False)
    if channels == 1:
        raw = raw[:, :, 0]
    return _to_rgb(np.ascontiguousarray(raw), encoding)


@_conversion_guard("compressed image")
def compressed_to_rgb(fmt: str, data: bytes | bytearray | memoryview | np.ndarray,
                      max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage payload (jpeg, png; ``format`` may carry a prefix
    such as ``"bgr8; jpeg compressed bgr8"`` as image_transport writes it). Its size is read from
    the header first: a frame over ``max_pixels`` is refused before anything is allocated."""
    buffer = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8).ravel()
    if buffer.size == 0:
        raise ImageConversionError("compressed image has no data")
    check_pixels(*compressed_dimensions(buffer), max_pixels)
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageConversionError(f"cannot decode compressed image (format {fmt!r}, {buffer.size} bytes)")
    if image.dtype == np.uint16:
        image = np.round(image.astype(np.float32) / 257.0).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


MIN_SIDE = 32  # pixels: smaller images carry too little for the network's 16-pixel patches


def check_usable(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` if the network can make something of it, else ImageConversionError: images under
    ``MIN_SIDE`` pixels on a side, or of one constant colour, would still "match" something."""
    height, width = rgb.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise ImageConversionError(f"image is {width}x{height}: too small to recognise a place "
                                   f"(at least {MIN_SIDE} px on a side)")
    if rgb.min() == rgb.max():
        raise ImageConversionError(f"image is one constant colour ({int(rgb.flat[0])}): nothing to recognise")
    return rgb


def to_rgb(msg, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Image or CompressedImage (any object with their fields) -> RGB uint8 (H, W, 3); frames
    over ``max_pixels`` are refused."""
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        return compressed_to_rgb(msg.format, msg.data, max_pixels)
    try:
        fields = (str(msg.encoding), int(msg.height), int(msg.width), int(msg.step), bool(msg.is_bigendian))
    except (TypeError, ValueError, AttributeError) as exc:
        raise ImageConversionError(f"not an Image message: {exc}") from None
    check_pixels(fields[2], fields[1], max_pixels)
    return raw_to_rgb(*fields, msg.data)


def rgb_to_fields(rgb: np.ndarray, encoding: str = "rgb8", padding: int = 0,
                  bigendian: bool = False) -> dict:
    """RGB uint8 -> the fields of a sensor_msgs/Image in ``encoding`` (for publishing, and for
    tests that need every encoding). ``padding`` extra bytes end each row."""
    if encoding in ("rgb8",):
        raw = rgb
    elif encoding in ("bgr8", "8UC3"):
        raw = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    elif encoding == "rgba8":
        raw = cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)
    elif encoding in ("bgra8", "8UC4"):
        raw = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
    elif encoding in ("mono8", "8UC1"):
        raw = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif encoding in ("mono16", "16UC1"):
        raw = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    elif encoding in _BAYER:
        raw = mosaic(rgb, encoding)
    elif encoding in ("yuv422", "uyvy", "yuv422_yuy2", "yuyv"):
        raw = _rgb_to_yuv422(rgb, uyvy=encoding in ("yuv422", "uyvy"))
    else:
        raise ImageConversionError(f"cannot write encoding {encoding!r}")
    height, width = rgb.shape[:2]
    if raw.dtype.itemsize > 1:
        raw = raw.astype(raw.dtype.newbyteorder(">" if bigendian else "<"))
    rows = np.ascontiguousarray(raw).view(np.uint8).reshape(height, -1)
    if padding:
        rows = np.concatenate([rows, np.zeros((height, padding), np.uint8)], axis=1)
    return {"encoding": encoding, "height": height, "width": width, "step": rows.shape[1],
            "is_bigendian": int(bigendian), "data": rows.tobytes()}


def mosaic(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """What a Bayer sensor with the given ROS pattern records of an RGB scene."""
    pattern = encoding[len("bayer_"):len("bayer_") + 4]  # e.g. "rggb": (0,0) (0,1) (1,0) (1,1)
    channel = {"r": 0, "g": 1, "b": 2}
    out = np.empty(rgb.shape[:2], np.uint8)
    for index, letter in enumerate(pattern):
        dy, dx = divmod(index, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, channel[letter]]
    return out


def _rgb_to_yuv422(rgb: np.ndarray, uyvy: bool) -> np.ndarray:
    """RGB -> packed 4:2:2, BT.601 video range (the inverse of OpenCV's YUV2RGB_UYVY / _YUYV)."""
    if rgb.shape[1] % 2:
        raise ImageConversionError("yuv422 needs an even image width")
    r, g, b = (rgb[:, :, i].astype(np.float32) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u_full = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v_full = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    u = (u_full[:, 0::2] + u_full[:, 1::2]) / 2
    v = (v_full[:, 0::2] + v_full[:, 1::2]) / 2
    out = np.empty((rgb.shape[0], rgb.shape[1], 2), np.float32)
    out[:, :, 1 if uyvy else 0] = y
    out[:, 0::2, 0 if uyvy else 1] = u
    out[:, 1::2, 0 if uyvy else 1] = v
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def encode_compressed(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """RGB -> JPEG/PNG bytes for a CompressedImage."""
    ext = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}.get(fmt)
    if ext is None:
        raise ImageConversionError(f"cannot compress to {fmt!r}; use jpeg or png")
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ImageConversionError(f"OpenCV could not encode {fmt}")
    return buf.tobytes()


def decode_file(path, flags: int = cv2.IMREAD_COLOR, max_pixels: int = MAX_PIXELS) -> np.ndarray | None:
    """An image file's pixels (OpenCV's layout), None when OpenCV cannot decode it. The bytes are read
    through the one read door (``reading``: a regular file only, never a FIFO or device, bounded) and
    decoded in memory (``cv2.imread`` crashes on a name that is not valid UTF-8); the size the header
    declares is checked first, for every format, and a format OpenCV would only guess at is refused."""
    try:
        data = np.frombuffer(read_bytes(path, "image"), dtype=np.uint8)
    except InputError as exc:
        raise ImageConversionError(str(exc)) from None
    if data.size == 0:
        return None
    try:
        check_pixels(*compressed_dimensions(data), max_pixels)
    except ImageConversionError as exc:
        raise ImageConversionError(f"{path}: {str(exc).replace('cannot decode compressed image: ', '')}") from None
    return cv2.imdecode(data, flags)


def read_image(path) -> np.ndarray:
    """An image file -> RGB uint8, or FileNotFoundError / ImageConversionError with the path
    (also for an image too small or too plain to recognise, see ``check_usable``)."""
    image = decode_file(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ImageConversionError(f"cannot read image {path}: not an image OpenCV can decode")
    try:
        return check_usable(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    except ImageConversionError as exc:
        raise ImageConversionError(f"{path}: {exc}") from None
