# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Checkpoints: our own format, and the DHE-VPR authors' released layout.

Everything loads with ``torch.load(..., weights_only=True)``: a checkpoint is data, never code.
Our format is a plain dict ``{"format", "version", "config", "state_dict", "meta"}``; the
config rebuilds the architecture, so a checkpoint is self-describing.
"""
from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import re
from pathlib import Path

import torch

from ...atomic import atomic_write
from ...reading import open_regular
from .homography_regressor import RegressorConfig
from .vpr_model import VPRModel, build_model

log = logging.getLogger(__name__)

FORMAT = "dhe_vpr_ros.checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, of an unknown layout, or for another model."""


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a regular file (read through the read door: never a FIFO or a device)."""
    digest = hashlib.sha256()
    with open_regular(path, "file", 1 << 40) as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(path: str | os.PathLike, model: VPRModel, meta: dict | None = None,
                    extra: dict | None = None, include_backbone: bool = True) -> None:
    """Write ``model`` (and optional training state in ``extra``) atomically to ``path``.

    ``include_backbone=False`` stores only the regressor, for a backbone left at its packaged
    ImageNet weights (stage dhe): the file shrinks to the regressor's size, and loading
    rebuilds the backbone from the installed weights (the map identity hash checks them).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()
             if include_backbone or not k.startswith("backbone.")}
    config = dict(model.config)
    if not include_backbone:
        config["backbone_weights"] = "pretrained"
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": config,
        "state_dict": state,
        "meta": dict(meta or {}),
    }
    if extra:
        payload.update(extra)
    buffer = io.BytesIO()  # a checkpoint is megabytes: serialised first, then one write through the door
    torch.save(payload, buffer)
    with atomic_write(path) as handle:
        handle.write(buffer.getbuffer())


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load the raw checkpoint dict safely, turning every failure into a CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path} (check the path, or omit it to use "
                              "the default model)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file (a directory, FIFO or device)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: it is truncated, corrupt or not a "
                              f"PyTorch weights file ({first_line})") from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, not a dict of weights")
    return payload


def _strip_prefix(state: dict, prefix: str) -> dict:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def is_author_layout(state: dict) -> bool:
    return any(k.startswith(("features_extractor.", "homography_regression.")) for k in state)


_IGNORED_AUTHOR_KEYS = re.compile(r"^features_extractor\.encoder\.classifier\.(attention_pool|fc|class_emb)\.?")
_AUTHOR_BLOCK = re.compile(r"^features_extractor\.encoder\.classifier\.blocks\.(\d+)\.")


def convert_author_state_dict(state: dict, kept_blocks: int = 8) -> tuple[dict, dict]:
    """Map the authors' keys onto ours. Returns (model config, our state dict).

    Theirs: ``features_extractor.encoder.*`` (SHI-Labs CCT), ``features_extractor.pool.1.p``
    (GeM), ``homography_regression.{pe, encoder.layers.N.*, encoder2.layers.N.*, linear.*}``.
    Classifier heads and blocks past ``kept_blocks`` are dropped.
    """
    state = _strip_prefix(state, "module.")
    if "homography_regression.pe" not in state:
        raise CheckpointError("author-layout checkpoint has no 'homography_regression.*' weights; "
                              "both the feature extractor and the regressor are needed")
    if not any(k.startswith("features_extractor.encoder.") for k in state):
        raise CheckpointError("author-layout checkpoint has no 'features_extractor.encoder.*' weights")
    ours: dict = {}
    dropped = []
    for key, value in state.items():
        block = _AUTHOR_BLOCK.match(key)
        if _IGNORED_AUTHOR_KEYS.match(key) or (block and int(block.group(1)) >= kept_blocks):
            dropped.append(key)
        elif key.startswith("features_extractor.encoder."):
            ours["backbone.encoder." + key[len("features_extractor.encoder."):]] = value
        elif key == "features_extractor.pool.1.p":
            ours["backbone.pool.p"] = value
        elif key.startswith("homography_regression."):
            ours["regressor." + key[len("homography_regression."):]] = value
        else:
            dropped.append(key)
    if dropped:
        log.info("author checkpoint: ignored %d keys not used by the truncated model", len(dropped))
    width = state["homography_regression.pe"].shape[-1]
    grid = math.isqrt(width)
    if grid * grid != width:
        raise CheckpointError(f"regressor positional embedding width {width} is not a square grid")

    def depth(prefix: str) -> int:
        layers = {int(m.group(1)) for k in state for m in [re.match(prefix + r"\.layers\.(\d+)\.", k)] if m}
        return len(layers)

    config = {
        "backbone": "cct14",
        "regressor": RegressorConfig(
            grid=grid,
            heads=12 if width % 12 == 0 else 1,
            ff_dim=state["homography_regression.encoder.layers.0.linear1.weight"].shape[0],
            layers=depth(r"homography_regression\.encoder"),
            residual_layers=depth(r"homography_regression\.encoder2"),
        ).to_dict(),
    }
    return config, ours


def _our_layout(path, payload: dict) -> tuple[dict, dict]:
    """(config, state dict) of a checkpoint in our format, every field checked."""
    version = payload.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"checkpoint {path}: field 'version' is {version!r}, not an integer")
    if version > VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}, newer "
                              f"than this dhe_vpr_ros supports ({VERSION}); upgrade the package")
    config, state = payload.get("config"), payload.get("state_dict")
    if not isinstance(config, dict):
        raise CheckpointError(f"checkpoint {path}: field 'config' is {type(config).__name__}, not an object")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: field 'state_dict' is "
                              f"{'missing' if state is None else type(state).__name__}, not a dict of tensors")
    return config, state


def _author_layout(path, payload: dict) -> tuple[dict, dict]:
    raw = payload.get("model_state_dict", payload.get("state_dict", payload))
    if not isinstance(raw, dict) or not is_author_layout(_strip_prefix(raw, "module.")):
        keys = ", ".join(map(str, list(raw)[:5])) if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"checkpoint {path} is neither a dhe_vpr_ros checkpoint nor in the "
                              f"DHE-VPR authors' layout (first keys: {keys})")
    return convert_author_state_dict(raw)


def check_config(path, config: dict) -> dict:
    """The architecture a checkpoint declares, checked before anything is built."""
    from .backbones import BACKBONES
    backbone = config.get("backbone")
    if backbone not in BACKBONES:
        raise CheckpointError(f"checkpoint {path}: field 'config.backbone' is {backbone!r}, not one of "
                              f"{', '.join(sorted(BACKBONES))}")
    try:
        regressor = RegressorConfig.from_dict(config.get("regressor"))
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path}: field 'config.regressor': {exc}") from None
    return {**config, "regressor": regressor.to_dict()}


def check_tensors(path, state: dict) -> None:
    """Every entry is a tensor, and every floating-point one is finite (a NaN weight gives NaN
    homographies and scores that would otherwise look like answers)."""
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"checkpoint {path}: state_dict entry {name!r} is {type(value).__name__}, "
                                  "not a tensor")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"checkpoint {path}: tensor {name!r} holds NaN or Inf values; the file is "
                                  "corrupt or the training diverged")


def load_checkpoint(path: str | os.PathLike, expect_backbone: str | None = None,
                    device: str | torch.device = "cpu") -> tuple[VPRModel, dict]:
    """Load our checkpoint or an author-layout one into a ready model (eval mode).

    Returns (model, payload) where payload holds ``meta`` and anything saved beside the
    weights. Raises CheckpointError with the reason (file and field) for anything that does
    not fit: layout, fields, architecture bounds, non-finite weights, another backbone.
    """
    payload = read_checkpoint(path)
    if payload.get("format") == FORMAT:
        config, state = _our_layout(path, payload)
    else:
        config, state = _author_layout(path, payload)
        payload = {"meta": {"source": "DHE-VPR author checkpoint"}}
    config = check_config(path, config)
    if expect_backbone is not None and config["backbone"] != expect_backbone:
        raise CheckpointError(f"checkpoint {path} is for backbone {config['backbone']!r}, "
                              f"not {expect_backbone!r}")
    check_tensors(path, state)
    from_package = config.get("backbone_weights") == "pretrained"
    try:
        model = build_model(config["backbone"], config["regressor"], pretrained=from_package)
        if from_package:
            missing, unexpected = model.load_state_dict(state, strict=False)
            if unexpected or any(not k.startswith("backbone.") for k in missing):
                raise RuntimeError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        else:
            model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit its declared architecture "
                              f"{config}: {str(exc).splitlines()[0]}") from exc
    return model.to(device).eval(), payload
