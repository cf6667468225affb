# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""ONNX export and the onnxruntime path (real photos, real files, real sessions), and the one
place that sets the process's thread pools."""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from dhe_vpr_ros.commands.cli import main
from dhe_vpr_ros.map.sources import folder_frames
from dhe_vpr_ros.commands.demo import DATA
from dhe_vpr_ros.method.identity import model_identity
from dhe_vpr_ros.method.localizer import prepare
from dhe_vpr_ros.map.database import MapDatabase
from dhe_vpr_ros.method.models import correlation_volume
from dhe_vpr_ros.runtime.onnx import OnnxError, load_onnx_model
from dhe_vpr_ros.runtime.loading import load_model

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[onnx])")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "model"
    assert main(["export", "--out", str(out)]) == 0
    return out


def test_exported_models_match_pytorch_on_real_photos(exported):
    model, _ = load_model(None)
    onnx = load_onnx_model(exported)
    photos = [f.load() for f in folder_frames(DATA / "queries")[:5]]
    images = prepare(photos, model, torch.device("cpu"))
    with torch.no_grad():
        ours, theirs = model.embed(images), onnx.embed(images)  # a batch of 5: the batch is dynamic
        points = model.regressor(correlation_volume(ours.local[0], ours.local[1:], model.regressor.config.grid))
    assert (ours.local - theirs.local).abs().max() < 1e-3 and (ours.global_ - theirs.global_).abs().max() < 1e-3
    (onnx_points,) = onnx._regressor_sessions.get().run(None, {"query": ours.local[:1].numpy(),
                                                        "candidates": ours.local[1:].numpy()})
    assert np.abs(points.numpy() - onnx_points).max() < 1e-3  # pixels of the 384 frame
    assert model_identity(onnx) == model_identity(model)  # maps are one between the runtimes
    meta = json.loads((exported / "model.json").read_text())
    assert meta["input_size"] == 384 and meta["mean"] == list(model.backbone.mean)
    assert meta["checkpoint_sha256"] and set(meta["files_sha256"]) == {"backbone.onnx", "regressor.onnx"}


def test_a_map_built_with_one_runtime_is_queried_with_the_other(exported, tmp_path, capsys):
    photos = DATA / "database"
    query = sorted((DATA / "queries").glob("03_*.jpg"))[0]
    assert main(["build-map", "--images", str(photos), "-o", str(tmp_path / "onnx_map"), "--runtime", "onnxruntime",
                 "--onnx", str(exported)]) == 0
    assert main(["build-map", "--images", str(photos), "-o", str(tmp_path / "torch_map")]) == 0
    assert MapDatabase.open(tmp_path / "onnx_map").identity == MapDatabase.open(tmp_path / "torch_map").identity
    capsys.readouterr()
    results = {}
    other_runtime = {"onnx_map": ["--runtime", "torch"],
                     "torch_map": ["--runtime", "onnxruntime", "--onnx", str(exported)]}
    for map_name, runtime in other_runtime.items():
        assert main(["query", "--map", str(tmp_path / map_name), "--json", "--reranker", "dhe", *runtime,
                     str(query)]) == 0
        results[map_name] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert results["onnx_map"][0]["place_id"] == results["torch_map"][0]["place_id"] == 3
    assert abs(results["onnx_map"][0]["score"] - results["torch_map"][0]["score"]) <= 3


def test_bad_exports_end_in_one_clear_line(exported, tmp_path, caplog):
    import shutil
    photo = str(sorted((DATA / "queries").glob("*.jpg"))[0])
    assert main(["build-map", "--images", str(DATA / "database"), "-o", str(tmp_path / "map")]) == 0

    def variant(name, change):
        folder = tmp_path / name
        shutil.copytree(exported, folder)
        change(folder)
        return folder

    def meta_edit(folder, **values):
        meta = json.loads((folder / "model.json").read_text())
        meta.update(values)
        (folder / "model.json").write_text(json.dumps(meta))

    def hashes_of(folder):
        from dhe_vpr_ros.runtime.onnx import file_sha256
        return {name: file_sha256(folder / name) for name in ("backbone.onnx", "regressor.onnx")}

    other = tmp_path / "other_export"
    other_model = load_model(None, backbone="efficientnet_lite0")[0]
    torch.nn.init.normal_(other_model.regressor.linear.weight)  # another checkpoint's regressor
    from dhe_vpr_ros.runtime.onnx_export import export_model
    export_model(other_model, other, {})
    cases = [
        (variant("missing_meta", lambda f: (f / "model.json").unlink()), "model.json is missing"),
        (variant("garbage", lambda f: (f / "regressor.onnx").write_bytes(b"not onnx")), "not the file this export"),
        (variant("foreign", lambda f: shutil.copy(other / "regressor.onnx", f / "regressor.onnx")),
         "not the file this export"),
        (variant("wrong_size", lambda f: meta_edit(f, input_size=320)), "different exports"),
        (variant("signed_garbage", lambda f: ((f / "backbone.onnx").write_bytes(b"\0" * 64),
                                              meta_edit(f, files_sha256=hashes_of(f)))),
         "not a usable ONNX model"),
        (variant("unsigned", lambda f: meta_edit(f, files_sha256={})), "records no hash"),
        (variant("not_ours", lambda f: meta_edit(f, format="something")), "not a dhe_vpr_ros ONNX export"),
    ]
    for folder, reason in cases:
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            code = main(["query", "--map", str(tmp_path / "map"), "--runtime", "onnxruntime", "--onnx", str(folder),
                         photo])
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert code == 2 and len(errors) == 1 and reason in errors[0], (folder.name, errors)
    with pytest.raises(OnnxError, match="not a new or empty folder"):
        export_model(other_model, exported, {})
    caplog.clear()
    assert main(["query", "--map", str(tmp_path / "map"), "--runtime", "onnxruntime", photo]) == 2
    assert "needs the exported model folder" in caplog.text


def test_thread_settings_are_applied_once_and_reported_by_info():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    shown = subprocess.run([sys.executable, "-m", "dhe_vpr_ros", "info", "--threads", "1"], capture_output=True,
                           text=True, env=env, check=True).stdout
    assert "torch 1 (+1 inter-op; as asked), BLAS 1, OpenCV 1, FAISS 1, OMP_WAIT_POLICY libgomp default" in shown
    kept = subprocess.run([sys.executable, "-m", "dhe_vpr_ros", "info"], capture_output=True, text=True,
                          env={**env, "OMP_WAIT_POLICY": "PASSIVE"}, check=True).stdout
    assert "OMP_WAIT_POLICY PASSIVE" in kept and "free cores:" in kept  # the user's own choice stays
    code = ("import cv2, faiss, torch\n"
            "from dhe_vpr_ros.runtime.threads import configure_threads\n"
            "a = configure_threads(1); b = configure_threads(1)\n"
            "print(a is b, torch.get_num_threads(), torch.get_num_interop_threads(), cv2.getNumThreads(), "
            "faiss.omp_get_max_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["True", "1", "1", "1", "1"]


def test_runtime_auto_uses_the_export_of_the_active_checkpoint_only(tmp_path, monkeypatch, caplog, capsys):
    """``export`` without --out writes into the user's cache folder; ``runtime: auto`` (the default)
    then runs that export through onnxruntime, with the same answers; another checkpoint, whose
    hash the export does not record, runs in PyTorch; an export beside a checkpoint is found too."""
    from dhe_vpr_ros.method.models import build_model, save_checkpoint
    from dhe_vpr_ros.method.models.checkpoint import file_sha256
    from dhe_vpr_ros.runtime.exports import cache_folder
    from dhe_vpr_ros.runtime.loading import default_checkpoint
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    photos = sorted(str(p) for p in (DATA / "queries").glob("*.jpg"))[:3]
    assert main(["build-map", "--images", str(DATA / "database"), "-o", str(tmp_path / "map")]) == 0

    def first_places(*extra):
        caplog.clear()
        capsys.readouterr()
        with caplog.at_level(logging.INFO):
            assert main(["query", "--map", str(tmp_path / "map"), "--json", *extra, *photos]) == 0
        answers = [json.loads(line)[0]["place_id"] for line in capsys.readouterr().out.splitlines()]
        return caplog.text + f"\nfirst places {answers}"

    text = first_places()
    assert "runtime auto: PyTorch (no export of default_model.pt" in text
    torch_answers = text.rsplit("\n", 1)[1]
    assert main(["export"]) == 0
    folder = cache_folder(file_sha256(default_checkpoint()))
    assert (folder / "model.json").is_file() and folder.is_relative_to(tmp_path / "cache")
    text = first_places()
    assert f"runtime auto: onnxruntime, the export of default_model.pt at {folder}" in text
    assert text.rsplit("\n", 1)[1] == torch_answers
    other = tmp_path / "other.pt"
    model = build_model("efficientnet_lite0", pretrained=True)
    save_checkpoint(other, model)
    assert "runtime auto: PyTorch (no export of other.pt" in first_places("--checkpoint", str(other))
    assert main(["export", "--checkpoint", str(other), "--out", str(tmp_path / "other.pt.onnx")]) == 0
    assert f"runtime auto: onnxruntime, the export of other.pt at {tmp_path / 'other.pt.onnx'}" in \
        first_places("--checkpoint", str(other))
