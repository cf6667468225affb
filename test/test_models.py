# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
import pytest
import torch
import torch.nn.functional as F

from dhe_vpr_ros.method.geometry import corner_error

from dhe_vpr_ros.method.models import (PRESETS, CheckpointError, RegressorConfig, build_model, correlation_volume,
                                       load_checkpoint, save_checkpoint)


def test_cct_gives_384x24x24_local_and_384d_global_at_384():
    model = build_model("cct14", "paper", pretrained=False).eval()
    with torch.no_grad():
        f = model.embed(torch.randn(2, 3, 384, 384))
    assert f.local.shape == (2, 384, 24, 24)
    assert f.global_.shape == (2, 384)
    assert torch.allclose(f.local.norm(dim=1), torch.ones(2, 24, 24), atol=1e-5)
    assert torch.allclose(f.global_.norm(dim=1), torch.ones(2), atol=1e-5)
    assert len(model.backbone.encoder.classifier.blocks) == 8


def test_light_backbone_works_at_its_own_size_with_imagenet_weights():
    model = build_model("efficientnet_lite0", pretrained=True).eval()
    assert model.backbone.input_size == 384 and model.regressor.config.grid == 12
    with torch.no_grad():
        f = model.embed(torch.randn(1, 3, 384, 384))
    assert f.local.shape == (1, 112, 24, 24)
    assert f.global_.shape == (1, 320)
    assert torch.allclose(f.local.norm(dim=1), torch.ones(1, 24, 24), atol=1e-5)
    # the packaged ImageNet weights were really loaded (BN statistics are not the defaults)
    assert not torch.allclose(model.backbone.encoder._bn0.running_var, torch.ones(32))


def test_regressor_starts_at_identity_homography():
    model = build_model("efficientnet_lite0", "light", pretrained=False).eval()
    grids = F.normalize(torch.randn(3, 112, 24, 24), dim=1)
    with torch.no_grad():
        h = model.homographies(grids[0], grids)
    assert corner_error(h, torch.eye(3).expand(3, 3, 3), 384, 384).max() < 1.0  # pixels


def _authors_compute_similarity(features_a, features_b):
    """The correlation exactly as DESIGN.md / the authors lay it out, written independently."""
    b, c, h, w = features_a.shape
    a = features_a.transpose(2, 3).contiguous().view(b, c, h * w)
    bb = features_b.view(b, c, h * w).transpose(1, 2)
    corr = torch.bmm(bb, a).view(b, h, w, h * w).transpose(2, 3).transpose(1, 2)
    return F.normalize(F.relu(corr), p=2, dim=1)  # (b, N_a, h, w)


def test_correlation_volume_matches_authors_layout():
    q = F.normalize(torch.randn(2, 32, 6, 6), dim=1)
    c = F.normalize(torch.randn(2, 32, 6, 6), dim=1)
    ours = correlation_volume(q, c, grid=6)
    theirs = _authors_compute_similarity(q, c).flatten(2)
    assert torch.allclose(ours, theirs, atol=1e-6)


def _to_author_layout(model):
    """Write our paper model's weights with the keys of the DHE-VPR release (plus the parts of
    the full CCT-14 that the truncated model drops, and the DataParallel prefix)."""
    state = {}
    for key, value in model.state_dict().items():
        if key == "backbone.pool.p":
            state["module.features_extractor.pool.1.p"] = value.clone()
        elif key.startswith("backbone.encoder."):
            state["module.features_extractor.encoder." + key[len("backbone.encoder."):]] = value.clone()
        elif key.startswith("regressor."):
            state["module.homography_regression." + key[len("regressor."):]] = value.clone()
    for extra in range(8, 14):  # blocks the truncated model does not keep
        state[f"module.features_extractor.encoder.classifier.blocks.{extra}.linear1.weight"] = torch.zeros(1)
    state["module.features_extractor.encoder.classifier.attention_pool.weight"] = torch.zeros(1, 384)
    state["module.features_extractor.encoder.classifier.fc.weight"] = torch.zeros(1000, 384)
    return state


def test_author_layout_checkpoint_round_trip(tmp_path):
    model = build_model("cct14", "paper", pretrained=False).eval()
    with torch.no_grad():
        model.backbone.pool.p.fill_(2.5)
        model.regressor.pe.normal_()
    path = tmp_path / "dhe_vpr_release.pth"
    torch.save({"model_state_dict": _to_author_layout(model)}, path)
    loaded, payload = load_checkpoint(path)
    assert payload["meta"]["source"] == "DHE-VPR author checkpoint"
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    images = torch.randn(2, 3, 384, 384)
    with torch.no_grad():
        a, b = model.embed(images), loaded.embed(images)
        assert torch.allclose(a.global_, b.global_)
        assert torch.allclose(model.homographies(a.local[0], a.local), loaded.homographies(b.local[0], b.local))


def test_our_checkpoint_round_trip_and_errors(tmp_path):
    model = build_model("efficientnet_lite0", "light", pretrained=True).eval()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, meta={"note": "test"})
    loaded, payload = load_checkpoint(path, expect_backbone="efficientnet_lite0")
    assert payload["meta"] == {"note": "test"}
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)

    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="backbone 'efficientnet_lite0', not 'cct14'"):
        load_checkpoint(path, expect_backbone="cct14")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="neither a dhe_vpr_ros checkpoint"):
        load_checkpoint(foreign)
    newer = tmp_path / "newer.pt"
    payload = torch.load(path, weights_only=True)
    payload["version"] = 99
    torch.save(payload, newer)
    with pytest.raises(CheckpointError, match="newer than this dhe_vpr_ros"):
        load_checkpoint(newer)
    mismatched = tmp_path / "mismatched.pt"
    payload["version"] = 1
    payload["config"]["regressor"]["ff_dim"] = 64
    torch.save(payload, mismatched)
    with pytest.raises(CheckpointError, match="does not fit its declared architecture"):
        load_checkpoint(mismatched)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_round_trips_through_a_checkpoint(tmp_path, preset):
    backbone = "cct14" if preset == "paper" else "efficientnet_lite0"
    model = build_model(backbone, preset, pretrained=False).eval()
    save_checkpoint(tmp_path / "m.pt", model)
    loaded, _ = load_checkpoint(tmp_path / "m.pt")
    assert loaded.regressor.config == model.regressor.config == PRESETS[preset]
    grid = torch.nn.functional.normalize(torch.randn(2, model.backbone.local_dim, 24, 24), dim=1)
    with torch.no_grad():
        assert torch.allclose(model.homographies(grid[0], grid[1:]), loaded.homographies(grid[0], grid[1:]))


def test_a_checkpoint_of_the_old_light_preset_still_loads_as_it_was_trained(tmp_path):
    """Until 0.2 'light' had 1 + 1 layers: its checkpoints record that config and keep it."""
    old = RegressorConfig(grid=12, heads=4, ff_dim=288, layers=1, residual_layers=1)
    assert old != PRESETS["light"]
    model = build_model("efficientnet_lite0", old.to_dict(), pretrained=True).eval()
    save_checkpoint(tmp_path / "old.pt", model, include_backbone=False)
    loaded, _ = load_checkpoint(tmp_path / "old.pt")
    assert loaded.regressor.config == old
    assert len(loaded.regressor.encoder.layers) == 1
    for key, value in model.regressor.state_dict().items():
        assert torch.equal(loaded.regressor.state_dict()[key], value)


class NotWeights:  # an arbitrary object needs code to unpickle: weights_only must refuse it
    pass


def test_checkpoint_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": NotWeights()}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
