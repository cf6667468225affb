# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Loading the model a command or the node runs: a checkpoint, the shipped default, or an ONNX
export run by onnxruntime."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .. import DATA_DIR
from ..method.identity import PRECISIONS
from ..method.models import VPRModel, build_model, load_checkpoint
from ..method.models.checkpoint import file_sha256
from .exports import resolve_runtime

__all__ = ["PRECISIONS", "RUNTIMES", "default_checkpoint", "load_any_model", "load_model"]

log = logging.getLogger(__name__)


def default_checkpoint() -> Path | None:
    """The checkpoint shipped inside the package, if this installation has one."""
    path = DATA_DIR / "default_model.pt"
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


RUNTIMES = ("auto", "torch", "onnxruntime")  # auto: the checkpoint's export if export wrote one


def load_any_model(checkpoint, backbone, device, logger, runtime: str = "auto", onnx: str | None = None,
                   threads: int | None = None, precision: str = "float"):
    """``load_model`` for runtime torch; for onnxruntime the exported folder ``onnx``; for auto
    the active checkpoint's export when ``export`` wrote one (``exports.resolve_runtime``), else torch.
    ``precision`` int8: the int8 backbone of the export (onnxruntime only)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if runtime == "auto" or precision == "int8":
        active = Path(checkpoint) if checkpoint else (default_checkpoint() if not backbone else None)
        runtime, onnx = resolve_runtime(runtime, active, onnx, str(device), logger, precision)
    if runtime == "torch":
        return load_model(checkpoint, backbone, device, logger)
    if not onnx:
        raise ValueError("runtime onnxruntime needs the exported model folder (--onnx DIR, the node's onnx_dir); "
                         "write one with `python -m dhe_vpr_ros export`")
    from .onnx import OnnxError, load_onnx_model
    model = load_onnx_model(onnx, backbone or None, threads, precision)
    if checkpoint and file_sha256(checkpoint) != model.meta.get("checkpoint_sha256"):
        made_from = model.meta.get("checkpoint") or "no checkpoint"
        raise OnnxError(f"the export {onnx} was made from {made_from}, not from --checkpoint {checkpoint} (their "
                        f"hashes differ): export that checkpoint (`export --checkpoint {checkpoint}`), or "
                        "leave --checkpoint out to run the export as it is")
    (logger or log).info("runtime onnxruntime: %s (%s, %s backbone)", onnx, ", ".join(model.providers), precision)
    return model, {"checkpoint": model.meta.get("checkpoint") or f"onnx:{onnx}",
                   "checkpoint_sha256": model.meta.get("checkpoint_sha256")}
