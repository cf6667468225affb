# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The int8 backbone (``export --int8``, ``precision int8``): real quantisation by onnxruntime, calibrated on the
demo's photos, real sessions, real maps; and what a user who mixes precisions is told."""
import json
import logging
import shutil

import pytest
import torch

from dhe_vpr_ros.commands.cli import main
from dhe_vpr_ros.commands.demo import DATA
from dhe_vpr_ros.map.database import MapDatabase
from dhe_vpr_ros.map.sources import folder_frames
from dhe_vpr_ros.method.identity import model_identity
from dhe_vpr_ros.method.localizer import prepare
from dhe_vpr_ros.runtime.loading import load_any_model
from dhe_vpr_ros.runtime.onnx import load_onnx_model
from dhe_vpr_ros.runtime.quantize import FLOAT_BLOCKS, float_convolutions, pick_evenly

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[onnx])")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "model"
    assert main(["export", "--int8", "--calibration-images", str(DATA / "database"), "--out", str(out)]) == 0
    return out


def _one_error(caplog, argv) -> tuple[int, list[str]]:
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        code = main(argv)
    return code, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_the_stem_and_the_first_blocks_stay_float():
    names = ["/backbone/encoder/_conv_stem/Conv", "/backbone/encoder/_blocks.0/_depthwise_conv/Conv",
             "/backbone/encoder/_blocks.2/_project_conv/Conv", "/backbone/encoder/_blocks.3/_expand_conv/Conv",
             "/backbone/encoder/_blocks.12/_project_conv/Conv", "/backbone/encoder/_blocks.20/_expand_conv/Conv"]
    assert float_convolutions(names, 3) == names[:3]
    assert float_convolutions(names, 0) == names[:1]  # the stem always
    assert FLOAT_BLOCKS == 3
    assert pick_evenly(list(range(10)), 4) == [0, 3, 6, 9] and pick_evenly([1, 2], 4) == [1, 2]


def test_int8_features_stay_close_to_float_on_photos_it_was_not_calibrated_on(exported):
    meta = json.loads((exported / "model.json").read_text())
    int8 = meta["int8"]
    assert int8["backbone"] == "backbone.int8.onnx" and int8["calibration_frames"] == 14
    assert int8["identity"]["precision"] == "int8" and meta["identity"]["precision"] == "float"
    assert int8["identity"]["weights_sha256"] == meta["files_sha256"]["backbone.int8.onnx"]
    floating, quantised = load_onnx_model(exported), load_onnx_model(exported, precision="int8")
    assert model_identity(quantised) != model_identity(floating)
    assert model_identity(quantised).precision == "int8"
    photos = [f.load() for f in folder_frames(DATA / "queries")]  # calibrated on the database side only
    images = prepare(photos, floating, torch.device("cpu"))
    a, b = floating.embed(images), quantised.embed(images)
    global_cos = (a.global_ * b.global_).sum(1)
    local_cos = (a.local * b.local).sum(1).mean((1, 2))
    assert global_cos.min() > 0.97, global_cos
    assert local_cos.mean() > 0.97 and local_cos.min() > 0.93, local_cos
    assert not torch.equal(a.local, b.local)  # it is another graph, not the float one under another name


def test_an_int8_map_finds_the_demo_places_and_refuses_a_float_model(exported, tmp_path, capsys, caplog):
    int8 = ["--runtime", "onnxruntime", "--onnx", str(exported), "--precision", "int8"]
    assert main(["build-map", "--images", str(DATA / "database"), "-o", str(tmp_path / "map"), *int8]) == 0
    assert MapDatabase.open(tmp_path / "map").identity.precision == "int8"
    capsys.readouterr()
    queries = sorted((DATA / "queries").glob("*.jpg"))
    assert main(["query", "--map", str(tmp_path / "map"), "--json", *int8, *map(str, queries)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    found = [line[0]["place_id"] for line in lines]
    assert sum(place == i for i, place in enumerate(found)) >= 13, found  # float finds 14 of 14
    for other in (["--runtime", "onnxruntime", "--onnx", str(exported)], ["--runtime", "torch"]):
        code, errors = _one_error(caplog, ["query", "--map", str(tmp_path / "map"), *other, str(queries[0])])
        assert code == 2 and len(errors) == 1, errors
        assert "precision: map 'int8' vs model 'float'" in errors[0] and "rebuild the map" in errors[0], errors


def test_int8_without_an_int8_export_is_one_line_that_says_how(exported, tmp_path, caplog, monkeypatch):
    float_only = tmp_path / "float_only"
    assert main(["export", "--out", str(float_only)]) == 0
    photo = str(sorted((DATA / "queries").glob("*.jpg"))[0])
    assert main(["build-map", "--images", str(DATA / "database"), "-o", str(tmp_path / "map")]) == 0
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # runtime auto finds no export there
    cases = [(["--runtime", "torch", "--precision", "int8"], "runs in onnxruntime, not PyTorch"),
             (["--runtime", "onnxruntime", "--onnx", str(float_only), "--precision", "int8"],
              "holds no int8 backbone (precision int8): export again with --int8"),
             (["--precision", "int8"], "no export of default_model.pt holds an int8 backbone; write one with")]
    for options, reason in cases:
        code, errors = _one_error(caplog, ["query", "--map", str(tmp_path / "map"), *options, photo])
        assert code == 2 and len(errors) == 1 and reason in errors[0], (options, errors)
    assert main(["export"]) == 0  # the float export in the cache folder, where export --int8 would not write
    code, errors = _one_error(caplog, ["query", "--map", str(tmp_path / "map"), "--precision", "int8", photo])
    assert code == 2 and len(errors) == 1, errors
    assert "has no int8 backbone; write one elsewhere" in errors[0] and "--out DIR" in errors[0], errors


def test_runtime_auto_runs_the_int8_export_of_the_active_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["export", "--int8", "--calibration-images", str(DATA / "database")]) == 0  # into the cache
    model, info = load_any_model(None, None, "cpu", None, "auto", None, None, "int8")
    assert model.precision == "int8" and model_identity(model).precision == "int8"
    assert str(tmp_path / "cache") in str(model.folder)
    floating, _ = load_any_model(None, None, "cpu", None, "auto", None, None, "float")
    assert floating.precision == "float" and floating.folder == model.folder  # the same export, its float graph


def test_export_int8_options_and_frames_are_refused_in_one_line_writing_nothing(tmp_path, caplog):
    few = tmp_path / "few"
    few.mkdir()
    for photo in sorted((DATA / "database").glob("*.jpg"))[:2]:
        shutil.copy(photo, few / photo.name)
    broken = tmp_path / "broken"
    shutil.copytree(DATA / "database", broken)
    (broken / "05_rubberwhale1.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    out = tmp_path / "out"
    cases = [(["--int8"], "give --calibration-images DIR or --map MAP"),
             (["--int8", "--calibration-images", str(broken)], "a calibration frame cannot be used"),
             (["--calibration-images", str(few)], "are for --int8: add --int8"),
             (["--int8", "--calibration-images", str(few), "--map", str(tmp_path)], "not both"),
             (["--int8", "--calibration-images", str(few)], "at least 4 calibration frames"),
             (["--int8", "--backbone", "cct14", "--calibration-images", str(DATA / "database")],
              "measured for efficientnet_lite0 only")]
    for options, reason in cases:
        code, errors = _one_error(caplog, ["export", "--out", str(out), *options])
        assert code == 2 and len(errors) == 1 and reason in errors[0], (options, errors)
        assert not out.exists(), options  # nothing written


def test_export_int8_calibrates_on_the_images_a_map_was_built_from(tmp_path, caplog):
    assert main(["build-map", "--images", str(DATA / "database"), "-o", str(tmp_path / "map")]) == 0
    assert main(["export", "--int8", "--map", str(tmp_path / "map"), "--out", str(tmp_path / "out")]) == 0
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert meta["int8"]["calibration_frames"] == len(list((DATA / "database").glob("*.jpg")))
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["backbone.int8.onnx", "backbone.onnx", "model.json", "regressor.onnx"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # onnxruntime's temporaries are gone


def test_a_lying_int8_record_is_one_line_naming_the_field(exported, tmp_path, caplog):
    photo = str(sorted((DATA / "queries").glob("*.jpg"))[0])
    int8 = ["--runtime", "onnxruntime", "--precision", "int8"]
    assert main(["build-map", "--images", str(DATA / "database"), "-o", str(tmp_path / "map"), *int8,
                 "--onnx", str(exported)]) == 0

    def variant(name, edit):
        folder = tmp_path / name
        shutil.copytree(exported, folder)
        meta = json.loads((folder / "model.json").read_text())
        edit(meta)
        (folder / "model.json").write_text(json.dumps(meta))
        return folder

    cases = [
        (variant("other_hash", lambda m: m["int8"]["identity"].update(weights_sha256="0" * 64)),
         "'int8.identity' names another graph"),
        (variant("no_frames", lambda m: m["int8"].update(calibration_frames=-3)), "'int8.calibration_frames'"),
        (variant("other_file", lambda m: m["int8"].update(backbone="../x.onnx")), "'int8.backbone'"),
        (variant("float_says_int8", lambda m: m["identity"].update(precision="int8")), "float backbone's identity"),
        (variant("odd_precision", lambda m: m["int8"]["identity"].update(precision="int4")), "field 'precision'"),
    ]
    for folder, reason in cases:
        code, errors = _one_error(caplog, ["query", "--map", str(tmp_path / "map"), *int8, "--onnx", str(folder),
                                           photo])
        assert code == 2 and len(errors) == 1 and reason in errors[0] and "model.json" in errors[0], \
            (folder.name, errors)


def test_onnxruntime_sessions_follow_the_calling_threads_count(exported):
    """The node's stages change their thread count frame by frame (all free cores when the other stage is idle):
    each count gets its own session, made once; a user's fixed count is the only one."""
    before = torch.get_num_threads()
    try:
        pool = load_onnx_model(exported, precision="int8")._backbone_sessions
        torch.set_num_threads(1)
        one = pool.get()
        torch.set_num_threads(2)
        two = pool.get()
        assert one is not two and pool.get() is two
        assert one.get_session_options().intra_op_num_threads == 1
        assert two.get_session_options().intra_op_num_threads == 2
        torch.set_num_threads(1)
        assert pool.get() is one
        fixed = load_onnx_model(exported, threads=3)._regressor_sessions
        assert fixed.get().get_session_options().intra_op_num_threads == 3
        torch.set_num_threads(2)
        assert fixed.get() is fixed.get() and fixed.get().get_session_options().intra_op_num_threads == 3
    finally:
        torch.set_num_threads(before)
