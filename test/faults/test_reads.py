# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Every command that reads x every lie (issue 33): images, bags, maps, checkpoints, exports and configs that
are a FIFO, declare a huge size, are truncated, mix files of two maps or two exports, or hold fields of the
wrong type, missing, or out of range. The promise: one line naming the file and exit 2 (a command that reads
one input), or a counted skip with a warning that names it (a folder of images), and never a hang: every
command runs with a timeout."""
import json
import os
import re
import shutil
import struct
import subprocess
import sys

import cv2
import pytest

from conftest import textured_image
from dhe_vpr_ros.image_conversion import ImageConversionError, read_image

from .matrix import REPO, SHIPPED, TRAIN, error_lines, no_traceback, run_here

BIG = 20000  # pixels a side: 400 MP, 1.2 GB decoded


# -- images that declare a huge size, in every format OpenCV decodes here ---------------------------------
def _encoded(ext: str) -> bytes:
    image = textured_image(3, 64)
    ok, data = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def _jpeg() -> bytes:
    data = bytearray(_encoded(".jpg"))
    i = 2
    while not (data[i] == 0xFF and 0xC0 <= data[i + 1] <= 0xC3):
        i += 1
    data[i + 5:i + 9] = struct.pack(">HH", 65000, 65000)
    return bytes(data)


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


DECLARING = {
    "PNG": lambda: _encoded(".png")[:16] + struct.pack(">II", BIG, BIG) + _encoded(".png")[24:],
    "JPEG": _jpeg,
    "BMP": lambda: _encoded(".bmp")[:18] + struct.pack("<ii", BIG, BIG) + _encoded(".bmp")[26:],
    "TIFF": lambda: b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 2)
    + struct.pack("<HHII", 256, 4, 1, BIG) + struct.pack("<HHII", 257, 4, 1, BIG) + b"\x00" * 4 + b"\x00" * 19000,
    "WebP": lambda: b"RIFF" + struct.pack("<I", 22) + b"WEBPVP8X" + struct.pack("<I", 10) + b"\x00" * 4
    + (BIG - 1).to_bytes(3, "little") + (BIG - 1).to_bytes(3, "little"),
    "AVIF": lambda: _box(b"ftyp", b"avif" + b"\x00" * 4 + b"mif1avif") + _box(b"meta", b"\x00" * 4 + _box(
        b"iprp", _box(b"ipco", _box(b"ispe", b"\x00" * 4 + struct.pack(">II", BIG, BIG))))),
    "JPEG 2000": lambda: b"\xff\x4f\xff\x51" + struct.pack(">HHIIII", 41, 0, BIG, BIG, 0, 0) + b"\x00" * 64,
    "GIF": lambda: b"GIF89a" + struct.pack("<HH", 65000, 65000) + b"\x00" * 64,
    "PNM": lambda: f"P6\n{BIG} {BIG}\n255\n".encode() + b"\x00" * 64,
    "Sun raster": lambda: b"\x59\xa6\x6a\x95" + struct.pack(">II", BIG, BIG) + b"\x00" * 64,
    "HDR": lambda: f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {BIG} +X {BIG}\n".encode() + b"\x00" * 64,
}


@pytest.mark.parametrize("fmt", DECLARING)
def test_an_image_declaring_a_huge_size_is_refused_from_its_header(fmt, tmp_path):
    path = tmp_path / "small.png"  # the name says nothing: OpenCV reads what the bytes are
    path.write_bytes(DECLARING[fmt]())
    with pytest.raises(ImageConversionError, match="over the limit"):
        read_image(path)


def test_data_in_no_format_we_read_is_refused_not_guessed(tmp_path):
    path = tmp_path / "x.jpg"
    path.write_bytes(b"this is text, not an image" * 10)
    with pytest.raises(ImageConversionError, match="not an image in a format this package reads"):
        read_image(path)


# -- lies, per kind of input ---------------------------------------------------------------------------
def fifo(path, sources=None):
    if path.exists():
        path.unlink()
    os.mkfifo(path)


def truncate(path, sources=None):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def json_edit(edit):
    def apply(path, sources=None):
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    return apply


def replaced_by(relative: str):
    """The file swapped for the one of the same name from another map or export of the same kind."""
    def apply(path, sources):
        shutil.copy(sources / relative, path)
    return apply


def _set(key, value):
    return json_edit(lambda d: d.__setitem__(key, value))


def _pop(key):
    return json_edit(lambda d: d.pop(key))


@pytest.fixture(scope="module")
def sources(tmp_path_factory, inputs):
    """A second map of the same size, two exports of different checkpoints, a bag, a finished run."""
    from test_build_map import _write_bag  # noqa: I100 - a test module of this suite
    root = tmp_path_factory.mktemp("sources")
    other = root / "other_images"
    shutil.copytree(inputs.images, other)
    for i, image in enumerate(sorted(other.iterdir())):  # the same count: the same file sizes, other content
        cv2.imwrite(str(image), cv2.cvtColor(cv2.resize(textured_image(900 + i, 256), (160, 120)), cv2.COLOR_RGB2BGR))
    assert main_ok(["build-map", "--images", str(other), "-o", str(root / "other_map")])
    assert main_ok(["export", "--out", str(root / "export"), "--checkpoint", str(SHIPPED)])
    assert main_ok(["export", "--out", str(root / "export_other"), "--checkpoint", str(inputs.run / "last.pt")])
    _write_bag(root / "bag", "mcap", False, "odom")
    return root


def main_ok(argv):
    code, lines = run_here(argv)
    return code == 0 or pytest.fail(f"{argv}: {lines}")


def run_bounded(argv, timeout=120):
    """The command as its own process, with a timeout: a reader that blocks fails the test, never hangs it."""
    try:
        return subprocess.run([sys.executable, "-m", "dhe_vpr_ros", *argv], capture_output=True, text=True,
                              timeout=timeout, cwd=REPO, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        pytest.fail(f"{argv} blocked for {timeout} s")


def query(inputs, *extra):
    return ["query", "--map", str(inputs.map), str(inputs.images / "0000.png"), *extra]


# (input kind, lie): how the input is copied to work on, which file of it lies and how, the command that reads it
READS = {
    ("image", "fifo"): (lambda i, s: i.images / "0000.png", None, fifo,
                        lambda i, w: ["query", "--map", str(i.map), str(w)]),
    ("image", "truncated"): (lambda i, s: i.images / "0000.png", None, truncate,
                             lambda i, w: ["query", "--map", str(i.map), str(w)]),
    ("image", "huge"): (lambda i, s: i.images / "0000.png", None, lambda p, s: p.write_bytes(DECLARING["TIFF"]()),
                        lambda i, w: ["query", "--map", str(i.map), str(w)]),
    ("bag", "fifo"): (lambda i, s: s / "bag", lambda w: next(w.glob("*.mcap")), fifo,
                      lambda i, w: ["build-map", "--bag", str(w), "--topic", "/cam/image_raw", "-o", str(w) + "_map"]),
    ("bag", "truncated"): (lambda i, s: s / "bag", lambda w: next(w.glob("*.mcap")), truncate,
                           lambda i, w: ["build-map", "--bag", str(w), "--topic", "/cam/image_raw", "-o",
                                         str(w) + "_map"]),
    ("bag", "wrong type"): (lambda i, s: s / "bag", lambda w: w / "metadata.yaml",
                            lambda p, s: p.write_text("rosbag2_bagfile_information: 7\n"),
                            lambda i, w: ["build-map", "--bag", str(w), "--topic", "/cam/image_raw", "-o",
                                          str(w) + "_map"]),
    ("map", "fifo"): (lambda i, s: i.map, lambda w: w / "manifest.json", fifo,
                      lambda i, w: ["query", "--map", str(w), str(i.images / "0000.png")]),
    ("map", "truncated"): (lambda i, s: i.map, lambda w: w / "local.pq4", truncate,
                           lambda i, w: ["query", "--map", str(w), str(i.images / "0000.png")]),
    ("map", "mixed"): (lambda i, s: i.map, lambda w: w / "local.pq4",
                       replaced_by("other_map/local.pq4"),
                       lambda i, w: ["query", "--map", str(w), str(i.images / "0000.png")]),
    ("map", "wrong type"): (lambda i, s: i.map, lambda w: w / "manifest.json", _set("num_places", "four"),
                            lambda i, w: ["query", "--map", str(w), str(i.images / "0000.png")]),
    ("map", "missing"): (lambda i, s: i.map, lambda w: w / "manifest.json", _pop("model"),
                         lambda i, w: ["query", "--map", str(w), str(i.images / "0000.png")]),
    ("map", "out of range"): (lambda i, s: i.map, lambda w: w / "manifest.json", _set("num_places", -4),
                              lambda i, w: ["query", "--map", str(w), str(i.images / "0000.png")]),
    ("checkpoint", "fifo"): (lambda i, s: SHIPPED, None, fifo, lambda i, w: ["info", "--checkpoint", str(w)]),
    ("checkpoint", "truncated"): (lambda i, s: SHIPPED, None, truncate, lambda i, w: ["info", "--checkpoint", str(w)]),
    ("checkpoint", "wrong type"): (lambda i, s: SHIPPED, None, lambda p, s: p.write_text('{"format": 1}'),
                                   lambda i, w: ["info", "--checkpoint", str(w)]),
    ("export", "fifo"): (lambda i, s: s / "export", lambda w: w / "model.json", fifo,
                         lambda i, w: query(i, "--runtime", "onnxruntime", "--onnx", str(w))),
    ("export", "truncated"): (lambda i, s: s / "export", lambda w: w / "backbone.onnx", truncate,
                              lambda i, w: query(i, "--runtime", "onnxruntime", "--onnx", str(w))),
    ("export", "mixed"): (lambda i, s: s / "export", lambda w: w / "regressor.onnx",
                          replaced_by("export_other/regressor.onnx"),
                          lambda i, w: query(i, "--runtime", "onnxruntime", "--onnx", str(w))),
    ("export", "missing"): (lambda i, s: s / "export", lambda w: w / "model.json", _pop("files_sha256"),
                            lambda i, w: query(i, "--runtime", "onnxruntime", "--onnx", str(w))),
    ("export", "wrong type"): (lambda i, s: s / "export", lambda w: w / "model.json", _set("input_size", "x"),
                               lambda i, w: query(i, "--runtime", "onnxruntime", "--onnx", str(w))),
    ("config", "fifo"): (lambda i, s: i.run, lambda w: w / "config.json", fifo,
                         lambda i, w: TRAIN(i.images, w, "--resume", "--epochs", "2")),
    ("config", "wrong type"): (lambda i, s: i.run, lambda w: w / "config.json", _set("views", 5),
                               lambda i, w: TRAIN(i.images, w, "--resume", "--epochs", "2")),
    ("config", "out of range"): (lambda i, s: i.run, lambda w: w / "config.json", _set("batch_size", -3),
                                 lambda i, w: TRAIN(i.images, w, "--resume", "--epochs", "2")),
    ("config", "not finite"): (lambda i, s: i.run, lambda w: w / "config.json",
                               lambda p, s: p.write_text(re.sub(r'"lr": [^,]+', '"lr": NaN', p.read_text())),
                               lambda i, w: TRAIN(i.images, w, "--resume", "--epochs", "2")),
}


@pytest.mark.parametrize("kind,lie", list(READS), ids=[f"{k}-{lie}" for k, lie in READS])
def test_a_lying_input_is_one_line_naming_it(kind, lie, inputs, sources, tmp_path):
    source_of, file_of, apply, argv_of = READS[(kind, lie)]
    source = source_of(inputs, sources)
    work = tmp_path / source.name
    (shutil.copytree if source.is_dir() else shutil.copy)(source, work)
    liar = file_of(work) if file_of else work
    apply(liar, sources)
    proc = run_bounded(argv_of(inputs, work))
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr[-3000:])
    assert no_traceback(proc.stderr) and str(work) in lines[0], lines[0]


def test_a_lying_image_in_a_folder_is_a_counted_skip_naming_it(inputs, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(inputs.images, folder)
    fifo(folder / "0001.png")
    truncate(folder / "0002.png")
    (folder / "0003.png").write_bytes(DECLARING["WebP"]())
    (folder / "0004.png").symlink_to(tmp_path / "nothing.png")
    proc = run_bounded(["build-map", "--images", str(folder), "-o", str(tmp_path / "map")])
    assert proc.returncode == 0 and no_traceback(proc.stderr), proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("[WARNING]")]
    said = "\n".join(warnings)
    assert "0001.png" in said and "0002.png" in said and "0003.png" in said and "0004.png" in said, said
    assert any("skipped" in w and "added" in w for w in warnings), said
    from dhe_vpr_ros.map.database import MapDatabase
    assert len(MapDatabase.open(tmp_path / "map")) == 1


def test_a_fifo_as_a_maps_manifest_never_blocks_overwrite(inputs, tmp_path):
    """A FIFO in place of a map's manifest: ``--overwrite`` reads it to tell whether the folder is a map."""
    folder = tmp_path / "map"
    folder.mkdir()
    os.mkfifo(folder / "manifest.json")
    proc = run_bounded(["build-map", "--images", str(inputs.images), "-o", str(folder), "--overwrite"], timeout=120)
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1 and str(folder) in lines[0], proc.stderr[-2000:]
    assert (folder / "manifest.json").is_fifo() and [p.name for p in folder.iterdir()] == ["manifest.json"]
