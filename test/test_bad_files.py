# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Every field of a map and of a checkpoint, broken one at a time: each is one clear error that
names the file and the field (a MapError / CheckpointError; exit code 2 and one [ERROR] line
from the command line), never a traceback, never a silent wrong answer."""
import json
import logging
import shutil
import struct

import faiss
import numpy as np
import pytest
import torch

from dhe_vpr_ros.commands.cli import main
from dhe_vpr_ros.map.database import MapDatabase
from dhe_vpr_ros.map.format import MapError
from dhe_vpr_ros.map.records import Place, Pose
from dhe_vpr_ros.method.identity import ModelIdentity
from dhe_vpr_ros.method.models import CheckpointError, build_model, load_checkpoint, save_checkpoint

IDENTITY = ModelIdentity("efficientnet_lite0", "abc123", 384, (8, 4, 4), 16)


@pytest.fixture(scope="module")
def good_map(tmp_path_factory):
    path = tmp_path_factory.mktemp("maps") / "good"
    rng = np.random.default_rng(0)
    db = MapDatabase(IDENTITY)
    db.add(rng.standard_normal((6, 16)), rng.standard_normal((6, 8, 4, 4)).astype(np.float16),
           [Place(0, f"p{i}.jpg", 10 + i, Pose("map", (i, 0, 0)), (1.0, 2.0), (640, 480)) for i in range(6)])
    db.save(path)
    return path


def _manifest(edit):
    def apply(path):
        data = json.loads((path / "manifest.json").read_text())
        (path / "manifest.json").write_text(json.dumps(edit(data)))
    return apply


def _place_line(edit, line=0):
    def apply(path):
        lines = (path / "places.jsonl").read_text().splitlines()
        lines[line] = json.dumps(edit(json.loads(lines[line])))
        (path / "places.jsonl").write_text("\n".join(lines) + "\n")
    return apply


def _set(key, value, inner=None):
    def edit(d):
        target = d[inner] if inner else d
        if value is KeyError:
            target.pop(key)
        else:
            target[key] = value
        return d
    return edit


def _faiss_claims_8_gib(path):
    """A flat index whose vector length field claims 2**31 floats; the file keeps its size."""
    data = bytearray((path / "global.faiss").read_bytes())
    assert struct.unpack_from("<Q", data, 37)[0] == 6 * 16  # where FAISS 1.x keeps that length
    struct.pack_into("<Q", data, 37, 2 ** 31)
    (path / "global.faiss").write_bytes(bytes(data))


def _nan_descriptor(path):
    index = faiss.read_index(str(path / "global.faiss"))
    vectors = index.reconstruct_n(0, index.ntotal)
    vectors[3, 5] = np.nan
    broken = faiss.IndexFlatIP(16)
    broken.add(vectors)
    faiss.write_index(broken, str(path / "global.faiss"))


MAP_CASES = [  # (case, damage, file named, words the message must hold)
    ("manifest is a list", lambda p: (p / "manifest.json").write_text("[]"), "manifest.json", "list"),
    ("manifest not JSON", lambda p: (p / "manifest.json").write_text("{"), "manifest.json", "unreadable"),
    ("manifest not UTF-8", lambda p: (p / "manifest.json").write_bytes(b"\xff\xfe{"), "manifest.json", "unreadable"),
    ("no model", _manifest(_set("model", KeyError)), "manifest.json", "'model' is missing"),
    ("model is a string", _manifest(_set("model", "effnet")), "manifest.json", "'model'"),
    ("local_shape of strings", _manifest(_set("local_shape", ["a", "b", "c"], "model")), "manifest.json",
     "'local_shape'"),
    ("input_size string", _manifest(_set("input_size", "384", "model")), "manifest.json", "'input_size'"),
    ("global_dim huge", _manifest(_set("global_dim", 10 ** 9, "model")), "manifest.json", "'global_dim'"),
    ("backbone missing", _manifest(_set("backbone", KeyError, "model")), "manifest.json", "'backbone'"),
    ("num_places abc", _manifest(_set("num_places", "abc")), "manifest.json", "'num_places'"),
    ("num_places negative", _manifest(_set("num_places", -1)), "manifest.json", "'num_places'"),
    ("version string", _manifest(_set("version", "1")), "manifest.json", "'version'"),
    ("index unknown", _manifest(_set("index", "lsh")), "manifest.json", "'index'"),
    ("build a list", _manifest(_set("build", [])), "manifest.json", "'build'"),
    ("place line a list", _place_line(lambda d: [1, 2]), "places.jsonl", "line 1"),
    ("place not JSON", lambda p: (p / "places.jsonl").write_text("{\n" * 6), "places.jsonl", "not JSON"),
    ("places not UTF-8", lambda p: (p / "places.jsonl").write_bytes(b"\xff" * 10), "places.jsonl", "unreadable"),
    ("image_size strings", _place_line(_set("image_size", ["w", "h"])), "places.jsonl", "'image_size'"),
    ("image_size zero", _place_line(_set("image_size", [0, 480]), 2), "places.jsonl", "line 3"),
    ("timestamp_ns string", _place_line(_set("timestamp_ns", "10")), "places.jsonl", "'timestamp_ns'"),
    ("pose without position", _place_line(lambda d: {**d, "pose": {"frame_id": "map"}}), "places.jsonl",
     "'position'"),
    ("utm of three", _place_line(_set("utm", [1, 2, 3])), "places.jsonl", "'utm'"),
    ("place_id out of order", _place_line(_set("place_id", 4), 1), "places.jsonl", "'place_id'"),
    ("place_id a bool", _place_line(_set("place_id", True)), "places.jsonl", "'place_id'"),
    ("too few places", lambda p: (p / "places.jsonl").write_text(
        "\n".join((p / "places.jsonl").read_text().splitlines()[:5]) + "\n"), "places.jsonl", "5 place records"),
    ("faiss header claims 8 GiB", _faiss_claims_8_gib, "global.faiss", "corrupt"),
    ("faiss garbage", lambda p: (p / "global.faiss").write_bytes(b"\0" * 16), "global.faiss", "bytes"),
    ("faiss missing", lambda p: (p / "global.faiss").unlink(), "global.faiss", "missing"),
    ("descriptor NaN", _nan_descriptor, "global.faiss", "not finite"),
    ("grids truncated", lambda p: (p / "local.f16").write_bytes(b"\0" * 10), "local.f16", "truncated"),
]


@pytest.mark.parametrize("case,damage,file,words", MAP_CASES, ids=[c[0] for c in MAP_CASES])
def test_each_broken_map_field_is_one_clear_error(tmp_path, good_map, case, damage, file, words):
    path = tmp_path / "map"
    shutil.copytree(good_map, path)
    damage(path)
    with pytest.raises(MapError) as err:
        MapDatabase.open(path)
    message = str(err.value)
    assert file in message and words in message, message
    assert "\n" not in message


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "light.pt"
    save_checkpoint(path, build_model("efficientnet_lite0", "light", pretrained=True), include_backbone=False)
    return path


def _payload_edit(edit):
    def apply(src, dst):
        payload = torch.load(src, weights_only=True)
        edit(payload)
        torch.save(payload, dst)
    return apply


def _regressor(field, value):
    return _payload_edit(lambda p: p["config"]["regressor"].__setitem__(field, value))


CHECKPOINT_CASES = [  # (case, damage, words the message must hold)
    ("no state_dict", _payload_edit(lambda p: p.pop("state_dict")), "'state_dict' is missing"),
    ("state_dict a list", _payload_edit(lambda p: p.__setitem__("state_dict", [1])), "'state_dict' is list"),
    ("config a string", _payload_edit(lambda p: p.__setitem__("config", "light")), "'config' is str"),
    ("version a string", _payload_edit(lambda p: p.__setitem__("version", "1")), "'version'"),
    ("version newer", _payload_edit(lambda p: p.__setitem__("version", 99)), "newer"),
    ("backbone unknown", _payload_edit(lambda p: p["config"].__setitem__("backbone", "resnet")), "config.backbone"),
    ("layers 1e9", _regressor("layers", 10 ** 9), "'layers'"),
    ("grid a float", _regressor("grid", 12.0), "'grid'"),
    ("heads do not divide", _regressor("heads", 7), "divisible"),
    ("unknown regressor field", _regressor("dropout", 0.1), "unknown fields"),
    ("regressor a list", _payload_edit(lambda p: p["config"].__setitem__("regressor", [])), "config.regressor"),
    ("NaN weight", _payload_edit(lambda p: p["state_dict"]["regressor.linear.bias"].__setitem__(0, float("nan"))),
     "'regressor.linear.bias' holds NaN"),
    ("Inf weight", _payload_edit(lambda p: p["state_dict"]["regressor.pe"].fill_(float("inf"))), "'regressor.pe'"),
    ("entry not a tensor", _payload_edit(lambda p: p["state_dict"].__setitem__("regressor.pe", [0.0])),
     "not a tensor"),
    ("weights of another shape", _regressor("ff_dim", 64), "does not fit"),
]


@pytest.mark.parametrize("case,damage,words", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_each_broken_checkpoint_field_is_one_clear_error(tmp_path, good_checkpoint, case, damage, words, caplog):
    path = tmp_path / "bad.pt"
    damage(good_checkpoint, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and words in str(err.value), str(err.value)
    # and from the command line: exit 2, one [ERROR] line naming the file, no traceback
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["info", "--checkpoint", str(path)]) == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(path) in errors[0].getMessage() and words in errors[0].getMessage()
    assert errors[0].exc_info is None


def test_broken_map_from_the_command_line_is_exit_2_and_one_error_line(tmp_path, good_map, caplog):
    path = tmp_path / "map"
    shutil.copytree(good_map, path)
    _manifest(_set("num_places", "abc"))(path)
    image = tmp_path / "q.png"
    import cv2
    cv2.imwrite(str(image), np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8))
    with caplog.at_level(logging.INFO):
        assert main(["query", "--map", str(path), str(image)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "manifest.json" in errors[0] and "'num_places'" in errors[0]
