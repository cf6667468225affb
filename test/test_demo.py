"""The main job end to end, and the shipped model."""
import json
import subprocess
import sys

import numpy as np
import torch

from dhe_vpr_ros.datasets import folder_frames
from dhe_vpr_ros.demo import DATA
from dhe_vpr_ros.geometry import corner_error
from dhe_vpr_ros.models.checkpoint import file_sha256
from dhe_vpr_ros.runtime import default_checkpoint, load_model
from dhe_vpr_ros.localizer import normalise
from dhe_vpr_ros.training_data import WarpedPairs

SHIPPED_SHA256 = "58dc1a91ddd0883908f325bff0593108948254370e2b4c2eede0df5a68d5ee87"
RECORDED_CORNER_ERROR_PX = 55.0  # measured 48.2 (data/TRAINING.md); identity is 62.4


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


def test_shipped_checkpoint_hash_and_corner_error_on_held_back_pairs():
    path = default_checkpoint()
    assert path is not None and file_sha256(path) == SHIPPED_SHA256
    model, info = load_model(None)
    assert info["checkpoint_sha256"] == SHIPPED_SHA256
    pairs = WarpedPairs(folder_frames(DATA / "database"), 384, seed=123, max_shift=0.2)
    errors, identity = [], []
    with torch.no_grad():
        for epoch in range(3):
            pairs.epoch = epoch
            for i in range(len(pairs)):
                s = pairs[i]
                fq = model.embed(normalise(s["query"][None], model))
                fp = model.embed(normalise(s["positive"][None], model))
                h = model.homographies(fq.local, fp.local)
                errors.append(corner_error(h, s["h_true"][None], 384, 384).item())
                identity.append(corner_error(torch.eye(3)[None], s["h_true"][None], 384, 384).item())
    assert np.mean(errors) < RECORDED_CORNER_ERROR_PX < np.mean(identity), (np.mean(errors), np.mean(identity))
