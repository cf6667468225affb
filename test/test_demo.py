# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The main job end to end, and the shipped model."""
import json
import subprocess
import sys

import numpy as np
import torch

from dhe_vpr_ros.map.sources import folder_frames
from dhe_vpr_ros.commands.demo import DATA
from dhe_vpr_ros.method.geometry import corner_error
from dhe_vpr_ros.image_conversion import read_image
from dhe_vpr_ros.method.identity import model_identity
from dhe_vpr_ros.method.localizer import Localizer
from dhe_vpr_ros.map.database import MapDatabase
from dhe_vpr_ros.map.records import Place
from dhe_vpr_ros.method.matching import grid_keypoints, mutual_nearest_neighbours
from dhe_vpr_ros.method.models.checkpoint import file_sha256
from dhe_vpr_ros.method.rerank import make_reranker
from dhe_vpr_ros.runtime.loading import default_checkpoint, load_model
from dhe_vpr_ros.training.views import LEVELS, synthetic_view

SHIPPED_SHA256 = "da960bd1810820c8622814b34b0f585086d028d60910f33833912eab481a42c7"
H1TO3 = np.array([[7.6285898e-01, -2.9922929e-01, 2.2567123e+02],  # opencv-doc H1to3p.xml: graf1 -> graf3
                  [3.3443473e-01, 1.0143901e+00, -7.6999973e+01],
                  [3.4663091e-04, -1.4364524e-05, 1.0]])


def test_demo_runs_end_to_end_and_dhe_is_no_worse_than_global_only(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dhe_vpr_ros", "demo", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["answered"] == summary["queries"] == 14 and not summary["failures"]
    assert summary["recall@1"]["dhe"] >= summary["recall@1"]["global_only"]
    assert summary["recall@1"]["dhe"] >= 85.0
    assert "Recall@1 with dhe re-ranking" in proc.stdout
    assert (tmp_path / "matches.png").stat().st_size > 10_000
    from rosbags.highlevel import AnyReader
    with AnyReader([tmp_path / "session_bag"]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts["/demo/camera/image_raw"] == 14 and counts["/vpr_node/match"] == 14


def test_shipped_checkpoint_publishes_an_accurate_homography_for_graf1_to_graf3():
    """What `query --json` returns with the default re-ranker, on a real second view with a
    published homography (measured 7.3 px, benchmarks/homography_accuracy.py; the bar is 10)."""
    path = default_checkpoint()
    assert path is not None and file_sha256(path) == SHIPPED_SHA256
    model, info = load_model(None)
    assert info["checkpoint_sha256"] == SHIPPED_SHA256
    load = lambda name: read_image(DATA / name)  # noqa: E731
    loc = Localizer(model, MapDatabase(model_identity(model)), top_k=1)
    loc.add_images([load("database/00_graf1.jpg")], [Place(-1, "graf1")])
    query = load("queries/00_graf3.jpg")
    scale = np.diag([0.6, 0.6, 1.0])  # the demo copies are 480x384 of the 800x640 originals
    truth = torch.from_numpy(scale @ np.linalg.inv(H1TO3) @ np.linalg.inv(scale))[None]

    def error(h):
        return corner_error(torch.from_numpy(h)[None], truth, 384, 480).item()

    published = error(loc.query(query).best.homography)
    loc.configure(refine_rounds=0)
    regressed = error(loc.query(query).best.homography)
    assert published < 10.0 < regressed, (published, regressed)


def test_refinement_improves_the_shipped_regressor_on_held_back_views():
    """Medium synthetic views of demo photos (never in training): refined < regressed < identity."""
    model, _ = load_model(None)
    loc = Localizer(model, MapDatabase(model_identity(model)), reranker="none")
    errors = {"identity": [], "regressed": [], "refined": []}
    photos = [f.load() for f in folder_frames(DATA / "database")][:7]
    kps = grid_keypoints(24, 24, 16)
    dhe = make_reranker("dhe", model, stride=16)  # the default refinement, as published
    with torch.no_grad():
        for i, photo in enumerate(photos):
            view = synthetic_view(np.random.default_rng([77, i]), photo, 384, LEVELS["medium"], photos[i - 1])
            q, p = (loc.embed([im])[0] for im in (view.query, view.positive))
            h = model.homographies(q[0], p).float()
            refined = dhe.refine(h, kps, mutual_nearest_neighbours(q[0], p))
            truth = torch.from_numpy(view.h_true)[None].float()
            for name, est in (("identity", torch.eye(3)[None]), ("regressed", h), ("refined", refined)):
                errors[name].append(corner_error(est, truth, 384, 384).item())
    mean = {k: float(np.mean(v)) for k, v in errors.items()}
    assert mean["refined"] < mean["regressed"] < mean["identity"], mean
