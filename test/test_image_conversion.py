# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Image conversion never raises anything but ImageConversionError, whatever the message holds."""
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dhe_vpr_ros.image_conversion import SUPPORTED_ENCODINGS, ImageConversionError, check_usable, rgb_to_fields, to_rgb

ENCODINGS = st.sampled_from([*SUPPORTED_ENCODINGS, "32FC1", "", "rgb16", "jpeg", "\x00"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(encoding=ENCODINGS, height=st.integers(-2, 40), width=st.integers(-2, 40),
       step_extra=st.integers(-8, 8), bigendian=st.integers(0, 2), length_extra=st.integers(-64, 64),
       seed=st.integers(0, 2**16))
def test_raw_conversion_raises_only_image_conversion_error(encoding, height, width, step_extra, bigendian,
                                                           length_extra, seed):
    step = max(0, width * 4 + step_extra) if step_extra >= 0 else max(0, width + step_extra)
    data = np.random.default_rng(seed).integers(0, 256, max(0, height * step + length_extra), np.uint8).tobytes()
    msg = SimpleNamespace(encoding=encoding, height=height, width=width, step=step, is_bigendian=bigendian, data=data)
    try:
        out = to_rgb(msg)
    except ImageConversionError:
        return
    assert out.dtype == np.uint8 and out.shape == (height, width, 3)


@settings(max_examples=150, deadline=None)
@given(fmt=st.sampled_from(["jpeg", "png", "", "bgr8; jpeg compressed bgr8"]), data=st.binary(max_size=512))
def test_compressed_conversion_raises_only_image_conversion_error(fmt, data):
    msg = SimpleNamespace(format=fmt, data=data)
    with pytest.raises(ImageConversionError):
        to_rgb(msg)  # random bytes are never a decodable image


@pytest.mark.parametrize("encoding", ["yuv422", "uyvy", "yuyv", "yuv422_yuy2"])
@pytest.mark.parametrize("width", [1, 641])
def test_odd_width_packed_yuv_is_a_clear_error(encoding, width):
    msg = SimpleNamespace(encoding=encoding, height=480 if width > 1 else 1, width=width, step=2 * width,
                          is_bigendian=0, data=bytes(2 * width * (480 if width > 1 else 1)))
    with pytest.raises(ImageConversionError, match="must be even"):
        to_rgb(msg)


def test_tiny_and_constant_images_are_refused_as_unusable():
    with pytest.raises(ImageConversionError, match="too small"):
        check_usable(np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(ImageConversionError, match="constant colour"):
        check_usable(np.full((240, 320, 3), 17, np.uint8))
    textured = np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)
    assert check_usable(textured) is textured
    # a valid 1x1 message converts; it is the usability check that refuses it
    assert to_rgb(SimpleNamespace(**rgb_to_fields(np.zeros((1, 1, 3), np.uint8)))).shape == (1, 1, 3)


def test_a_jpeg_with_a_megabytes_long_icc_profile_is_read_as_opencv_reads_it(tmp_path):
    """Cameras, phones and editors embed ICC profiles (APP2) and XMP (APP1) before the frame header; a 2 MB
    profile puts the frame header past any fixed prefix of the file: the header check must step over it."""
    import cv2
    from dhe_vpr_ros.image_conversion import compressed_dimensions, read_image
    rng = np.random.default_rng(3)
    picture = cv2.GaussianBlur(rng.integers(0, 255, (120, 200, 3), dtype=np.uint8), (5, 5), 0)
    ok, encoded = cv2.imencode(".jpg", picture)
    assert ok
    chunk = b"ICC_PROFILE\x00" + bytes(65533 - 2 - 12)  # one APP2 segment at its largest
    segment = b"\xff\xe2" + (len(chunk) + 2).to_bytes(2, "big") + chunk
    data = encoded.tobytes()
    data = data[:2] + segment * 32 + data[2:]  # about 2 MB of profile after SOI
    path = tmp_path / "with_profile.jpg"
    path.write_bytes(data)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (120, 200, 3)  # OpenCV takes it
    assert compressed_dimensions(np.frombuffer(data, np.uint8)) == (200, 120)
    assert read_image(path).shape == (120, 200, 3)
