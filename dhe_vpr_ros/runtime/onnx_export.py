# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""``export``: the backbone and the regressor as ONNX files, with model.json (see ``onnx`` for the
folder's layout and the model that runs it); with calibration frames also an int8 backbone
(``quantize``). Written through the write door (``atomic``) into a
temporary folder of this package's beside the target and moved in at the end, under the target's
writer lock (a second export to the same folder waits, then finds it taken and writes nothing);
temporaries of killed exports are removed by the next one."""
from __future__ import annotations

import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..atomic import (Scratch, WriteError, check_name, check_not_protected, refuse_link, remove_stale, write_bytes,
                      write_error)
from ..locks import LockTimeout, writer_lock
from ..method.identity import model_identity
from ..method.localizer import prepare
from ..method.models import VPRModel, correlation_volume
from ..reading import read_bytes
from .onnx import (BACKBONE, FORMAT, INT8_BACKBONE, MAX_GRAPH_BYTES, META, OPSET, REGRESSOR, VERSION, OnnxError,
                   file_sha256)
from .quantize import FLOAT_BLOCKS, quantize_backbone

__all__ = ["export_model"]

log = logging.getLogger(__name__)


class _RegressorGraph(nn.Module):
    """What regressor.onnx computes: grids -> correlation volume -> 4 point pairs."""

    def __init__(self, model: VPRModel):
        super().__init__()
        self.regressor = model.regressor

    def forward(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        corr = correlation_volume(query[0], candidates, self.regressor.config.grid)
        return self.regressor(corr)


class _BackboneGraph(nn.Module):
    def __init__(self, model: VPRModel):
        super().__init__()
        self.backbone = model.backbone

    def forward(self, images: torch.Tensor):
        chunking = getattr(self.backbone, "cpu_chunking", None)
        if chunking is not None:
            self.backbone.cpu_chunking = False  # the whole batch in one pass: a dynamic batch in the graph
        try:
            features = self.backbone(images)
        finally:
            if chunking is not None:
                self.backbone.cpu_chunking = chunking
        return features.local, features.global_


def _check_target(out: Path) -> None:
    if out.is_symlink() or out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OnnxError(f"export --out {out} is not a new or empty folder: nothing was written")
    check_not_protected(out)
    check_name(out / META)


def _graph_bytes(module: nn.Module, inputs: tuple, **options) -> bytes:
    """The ONNX file of ``module`` as bytes (written by the caller through the door)."""
    buffer = io.BytesIO()
    torch.onnx.export(module, inputs, buffer, dynamo=False, opset_version=OPSET, **options)
    return buffer.getvalue()


def export_model(model: VPRModel, out: str | os.PathLike, checkpoint_info: dict, lock_timeout: float = 600.0,
                 calibration: Sequence[Callable[[], np.ndarray]] | None = None) -> dict:
    """Write backbone.onnx, regressor.onnx and model.json into ``out`` (a new or empty folder), and
    backbone.int8.onnx when ``calibration`` (loaders of RGB frames of the user's camera) is given;
    returns model.json's content."""
    refuse_link(out, "a folder")
    out = Path(os.path.realpath(out))
    _check_target(out)  # before the work
    model = model.cpu().eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with writer_lock(out, lock_timeout, "the export"):
            _check_target(out)  # again, holding the lock: another export may have filled it meanwhile
            stale = remove_stale(out.parent)  # of exports that were killed
            if stale:
                log.info("removed %d leftovers of interrupted writes: %s", len(stale), ", ".join(p.name for p in stale))
            scratch = Scratch(out.parent, f"an export to {out.name}")
            try:
                meta = _write_export(model, scratch.path, checkpoint_info)
                if calibration:
                    meta = _write_int8(model, scratch.path, meta, calibration)
                scratch.unmark()
                if out.exists():
                    _move_into(scratch.path, out)
                else:
                    os.replace(scratch.path, out)
            finally:
                scratch.release()
    except LockTimeout as exc:
        raise OnnxError(str(exc)) from None
    except WriteError:
        raise
    except OSError as exc:
        raise write_error(out, exc) from None
    return meta


def _write_export(model: VPRModel, folder: Path, checkpoint_info: dict) -> dict:
    bb = model.backbone
    size, grid = bb.input_size, bb.grid_size
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused encoder op has no ONNX form: export the plain one
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shape checks that are constant here
            images = torch.zeros(2, 3, size, size)
            write_bytes(folder / BACKBONE, _graph_bytes(
                _BackboneGraph(model), (images,), input_names=["images"], output_names=["local", "global"],
                dynamic_axes={"images": {0: "batch"}, "local": {0: "batch"}, "global": {0: "batch"}}))
            query, candidates = torch.zeros(1, bb.local_dim, grid, grid), torch.zeros(3, bb.local_dim, grid, grid)
            write_bytes(folder / REGRESSOR, _graph_bytes(
                _RegressorGraph(model), (query, candidates), input_names=["query", "candidates"],
                output_names=["points"], dynamic_axes={"candidates": {0: "pairs"}, "points": {0: "pairs"}}))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    meta = {"format": FORMAT, "version": VERSION, "backbone": bb.name, "input_size": size, "stride": bb.stride,
            "local_dim": bb.local_dim, "global_dim": bb.global_dim, "mean": list(bb.mean), "std": list(bb.std),
            "regressor": model.regressor.config.to_dict(), "identity": model_identity(model).to_dict(),
            "checkpoint": checkpoint_info.get("checkpoint"),
            "checkpoint_sha256": checkpoint_info.get("checkpoint_sha256"),
            "files_sha256": {name: file_sha256(folder / name) for name in (BACKBONE, REGRESSOR)}, "opset": OPSET}
    write_bytes(folder / META, json.dumps(meta, indent=2).encode())
    return meta


def _write_int8(model: VPRModel, folder: Path, meta: dict, calibration: Sequence[Callable[[], np.ndarray]]) -> dict:
    """backbone.int8.onnx beside the float graph, and model.json again with its identity and hash."""
    def normalised(load: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
        return lambda: prepare([load()], model, torch.device("cpu")).numpy()

    graph = read_bytes(folder / BACKBONE, "exported backbone", MAX_GRAPH_BYTES)
    int8 = quantize_backbone(graph, model.backbone.name, [normalised(load) for load in calibration], folder)
    write_bytes(folder / INT8_BACKBONE, int8)
    digest = file_sha256(folder / INT8_BACKBONE)
    identity = {**meta["identity"], "weights_sha256": digest, "precision": "int8"}
    meta = {**meta, "int8": {"backbone": INT8_BACKBONE, "identity": identity, "calibration_frames": len(calibration),
                             "float_blocks": FLOAT_BLOCKS},
            "files_sha256": {**meta["files_sha256"], INT8_BACKBONE: digest}}
    write_bytes(folder / META, json.dumps(meta, indent=2).encode())
    return meta


def _move_into(tmp: Path, out: Path) -> None:
    """``out`` is an existing empty folder: move the files in, then drop the temporary one."""
    for item in tmp.iterdir():
        os.replace(item, out / item.name)
    tmp.rmdir()
