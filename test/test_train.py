# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The train command on generated images: both stages, exact resume, DDP over gloo, bad inputs.

Images are generated (textured scenes); pairs are warped copies, so no labels are needed."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from conftest import textured_image
from dhe_vpr_ros.commands.cli import main
from dhe_vpr_ros.method.models import build_model, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for i in range(6):
        cv2.imwrite(str(folder / f"img_{i}.png"), cv2.cvtColor(textured_image(200 + i, 256)[:192], cv2.COLOR_RGB2BGR))
    return folder


def _train(out, photos, *extra):
    return main(["train", "--images", str(photos), "--out", str(out), "--batch-size", "2", "--lr", "1e-3",
                 "--val-fraction", "0.2", "--no-tensorboard", "--val-top-k", "2", *extra])


def _history(out):
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def test_stage_dhe_lowers_the_loss_and_writes_a_loadable_checkpoint(tmp_path, photos):
    out = tmp_path / "dhe"
    assert _train(out, photos, "--epochs", "8", "--warp-repeats", "1", "--difficulty", "0.2", "--lr", "3e-4") == 0
    history = _history(out)
    # the same labelled views every epoch: the loss and the corner error must go down (two-epoch
    # means: with four photos one epoch is two steps)
    for key in ("loss", "corner_error_px"):
        first = (history[1]["train"][key] + history[2]["train"][key]) / 2
        last = (history[-1]["train"][key] + history[-2]["train"][key]) / 2
        assert last < 0.8 * first, (key, first, last)
    assert history[-1]["train"]["rei_loss"] > 0  # mixed with REI by default
    config = json.loads((out / "config.json").read_text())
    assert config["views"]["max_tilt_deg"] == 60.0 and config["difficulty"] == 0.2  # the recipe is recorded
    model, payload = load_checkpoint(out / "best.pt")
    assert payload["meta"]["stage"] == "dhe" and (out / "config.json").is_file()
    # and a map can be built with it, as build-map and the node load it
    assert main(["build-map", "--images", str(photos), "-o", str(tmp_path / "map"),
                 "--checkpoint", str(out / "last.pt")]) == 0


def test_stage_joint_runs_triplet_mining_and_lowers_its_loss(tmp_path, photos):
    out = tmp_path / "joint"
    assert _train(out, photos, "--stage", "joint", "--epochs", "3", "--negatives", "2",
                  "--cache-refresh", "4", "--lr", "1e-4", "--warp-repeats", "1") == 0
    history = _history(out)
    assert history[-1]["train"]["loss"] < history[1]["train"]["loss"]
    assert history[1]["train"]["triplet_loss"] >= 0
    model, _ = load_checkpoint(out / "last.pt")
    fresh = build_model("efficientnet_lite0", pretrained=True)
    changed = {name for name, p in model.backbone.named_parameters()
               if not torch.equal(p, dict(fresh.backbone.named_parameters())[name])}
    assert changed
    assert not any(n.startswith("encoder._blocks.0.") for n in changed)  # early blocks stay frozen


def test_resume_gives_the_same_weights_as_a_straight_run(tmp_path, photos):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _train(straight, photos, "--epochs", "2", "--seed", "3") == 0
    assert _train(split, photos, "--epochs", "1", "--seed", "3") == 0
    assert _train(split, photos, "--epochs", "2", "--seed", "3", "--resume") == 0
    a, _ = load_checkpoint(straight / "last.pt")
    b, _ = load_checkpoint(split / "last.pt")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(pa, pb, atol=1e-6), name


def test_ddp_two_gloo_processes_agree_on_the_weights(tmp_path, photos):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}  # torchelastic_* folders
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(29500 + os.getpid() % 1000), "-m", "dhe_vpr_ros", "train",
                           "--images", str(photos), "--out", str(out), "--epochs", "1", "--batch-size", "2",
                           "--lr", "1e-3", "--no-tensorboard", "--val-top-k", "2", "--val-fraction", "0.2",
                           "--dump-rank-weights"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = torch.load(out / "rank0_weights.pt", weights_only=True)
    w1 = torch.load(out / "rank1_weights.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    initial = build_model("efficientnet_lite0", pretrained=True).regressor.state_dict()
    assert any(not torch.equal(w0[k], initial[k.removeprefix("regressor.")]) for k in w0 if k.startswith("regressor."))
    assert (out / "last.pt").is_file()


def test_bad_inputs_fail_before_training(tmp_path, photos, caplog):
    (tmp_path / "empty").mkdir()
    assert main(["train", "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o1")]) == 2
    assert "no images" in caplog.text
    geo = tmp_path / "geo"
    for split in ("train", "val"):
        for part in ("database", "queries"):
            (geo / split / part).mkdir(parents=True)
            cv2.imwrite(str(geo / split / part / "plain_name.png"), textured_image(1, 64))
    assert main(["train", "--dataset", str(geo), "--out", str(tmp_path / "o2")]) == 2
    assert "no UTM coordinates" in caplog.text
    cct = build_model("cct14", pretrained=False)
    save_checkpoint(tmp_path / "cct.pt", cct)
    assert main(["train", "--images", str(photos), "--out", str(tmp_path / "o3"),
                 "--init-checkpoint", str(tmp_path / "cct.pt")]) == 2
    assert "is for backbone 'cct14'" in caplog.text
    assert not (tmp_path / "o3" / "last.pt").exists()


def test_labels_only_views_carry_the_same_label_as_full_views():
    """Once every view of a warp set is cached, the trainer asks for labels only; they must be
    the labels of the very views whose features are cached."""
    from dhe_vpr_ros.map.sources import Frame
    from dhe_vpr_ros.training.pairs import WarpedPairs
    frames = [Frame(f"f{i}", (lambda i=i: textured_image(300 + i, 320))) for i in range(4)]
    pairs = WarpedPairs(frames, 384, seed=5, band=(0.0, 1.0))
    for epoch in range(3):
        pairs.epoch = epoch
        full = [pairs[i] for i in range(4)]
        pairs.labels_only = True
        labels = [pairs[i] for i in range(4)]
        pairs.labels_only = False
        assert all(torch.allclose(a["h_true"], b["h_true"]) for a, b in zip(full, labels))
        assert all(b["query"].numel() == 0 for b in labels) and full[0]["query"].shape == (384, 384, 3)


def test_a_geo_split_trains_and_validates_recall(tmp_path):
    """``--dataset``: REI on geo pairs (no labels) and validation by Recall@N on the val split, as
    the paper trains; each place is seen twice (database and a shifted query view) 5 m apart."""
    geo = tmp_path / "geo"
    for split, count in (("train", 4), ("val", 3)):
        for part, shift in (("database", 0), ("queries", 12)):
            folder = geo / split / part
            folder.mkdir(parents=True)
            for i in range(count):
                scene = textured_image(400 + i + 10 * (split == "val"), 256)
                view = np.roll(scene, shift, axis=1)[:192]
                name = f"@{500000 + 100 * i:.2f}@{4000000 + 5 * (part == 'queries'):.2f}@@.png"
                cv2.imwrite(str(folder / name), cv2.cvtColor(view, cv2.COLOR_RGB2BGR))
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(geo), "--out", str(out), "--epochs", "1", "--batch-size", "2",
                 "--no-tensorboard", "--val-top-k", "3"]) == 0
    history = _history(out)
    assert [h["epoch"] for h in history] == [0, 1]
    val = history[-1]["val"]
    assert set(val) >= {"recall@1/none", "recall@1/dhe", "recall@5/dhe"}
    assert val["recall@5/dhe"] == 100.0  # 3 places: every query's true place is among the first 5
