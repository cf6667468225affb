# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Setting up for a command or the node, in one place: device -> model -> map -> Localizer."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .models import VPRModel, build_model, load_checkpoint
from .models.checkpoint import file_sha256

__all__ = ["RUNTIMES", "default_checkpoint", "load_any_model", "load_model", "open_localizer", "resolve_device"]

log = logging.getLogger(__name__)


def resolve_device(name: str | None, logger=None) -> torch.device:
    """'cuda' without a usable GPU falls back to the CPU with a warning instead of failing."""
    logger = logger or log
    name = (name or "cpu").strip() or "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        logger.warning("device %r requested but CUDA is not available; running on the CPU", name)
        return torch.device("cpu")
    return device


def default_checkpoint() -> Path | None:
    """The checkpoint shipped inside the package, if this installation has one."""
    path = Path(__file__).resolve().parent / "data" / "default_model.pt"
    return path if path.is_file() else None


def load_model(checkpoint: str | os.PathLike | None = None, backbone: str | None = None,
               device: torch.device | str = "cpu", logger=None) -> tuple[VPRModel, dict]:
    """The model for a command: ``checkpoint`` if given, else the shipped default, else the
    backbone's ImageNet weights with an untrained regressor (DHE scores are then meaningless,
    which the log says). Returns (model in eval mode on ``device``, build info for the map)."""
    logger = logger or log
    if checkpoint:
        model, _ = load_checkpoint(checkpoint, expect_backbone=backbone or None, device=device)
        return model, {"checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(checkpoint)}
    shipped = default_checkpoint()
    if shipped is not None:
        model, _ = load_checkpoint(shipped, device=device)
        if not backbone or model.backbone.name == backbone:
            logger.info("no checkpoint given: using the shipped default model (%s)", shipped.name)
            return model, {"checkpoint": f"default:{shipped.name}", "checkpoint_sha256": file_sha256(shipped)}
    name = backbone or "efficientnet_lite0"
    logger.warning("no checkpoint given: %s with ImageNet weights and an UNTRAINED homography "
                   "regressor; DHE re-ranking needs a trained checkpoint", name)
    model = build_model(name, pretrained=True).to(device).eval()
    return model, {"checkpoint": None, "checkpoint_sha256": None}


RUNTIMES = ("torch", "onnxruntime")


def load_any_model(checkpoint, backbone, device, logger, runtime: str = "torch", onnx: str | None = None,
                   threads: int | None = None):
    """``load_model`` for runtime torch; for onnxruntime the exported folder ``onnx``."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    if runtime == "torch":
        return load_model(checkpoint, backbone, device, logger)
    if not onnx:
        raise ValueError("runtime onnxruntime needs the exported model folder (--onnx DIR, the node's onnx_dir); "
                         "write one with `python -m dhe_vpr_ros export --out DIR`")
    from .onnx_model import load_onnx_model
    model = load_onnx_model(onnx, backbone or None, threads)
    (logger or log).info("runtime onnxruntime: %s (%s)", onnx, ", ".join(model.providers))
    return model, {"checkpoint": model.meta.get("checkpoint") or f"onnx:{onnx}",
                   "checkpoint_sha256": model.meta.get("checkpoint_sha256")}


def open_localizer(checkpoint: str | os.PathLike | None = None, backbone: str | None = None,
                   device: str | None = "cpu", map_path: str | os.PathLike | None = None, *,
                   new_map=None, logger=None, threads: int | None = None, runtime: str = "torch",
                   onnx: str | os.PathLike | None = None, **options):
    """The one setup every command and the node share: apply the thread settings
    (``threads.configure_threads``), resolve the device, load the model,
    open the map at ``map_path`` (checked against the model) or make a new one
    (``new_map(model, build_info)``, default: an empty in-memory map), and tie them into a
    ``Localizer``; ``options`` (reranker, top_k, refine_rounds) go to it."""
    from .localizer import Localizer, model_identity
    from .mapdb import MapDatabase
    from .threads import configure_threads
    settings = configure_threads(threads)
    dev = resolve_device(device, logger) if runtime == "torch" else torch.device("cpu")
    model, build_info = load_any_model(checkpoint or None, backbone or None, dev, logger, runtime, onnx,
                                       settings.torch)
    if map_path:
        database = MapDatabase.open(map_path, expect=model_identity(model))
    elif new_map is not None:
        database = new_map(model, build_info)
    else:
        database = MapDatabase(model_identity(model), build_info=build_info)
    return Localizer(model, database, dev, **options)
