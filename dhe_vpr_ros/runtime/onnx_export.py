# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""``export``: the backbone and the regressor as ONNX files, with model.json (see ``onnx`` for the
folder's layout and the model that runs it). Written into a locked temporary folder beside the
target and moved in at the end; temporaries of killed exports are removed by the next one."""
from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_write, check_not_protected, locked_tempdir, remove_stale
from ..method.identity import model_identity
from ..method.models import VPRModel, correlation_volume
from .onnx import BACKBONE, FORMAT, META, OPSET, REGRESSOR, VERSION, OnnxError, file_sha256

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


def export_model(model: VPRModel, out: str | os.PathLike, checkpoint_info: dict) -> dict:
    """Write backbone.onnx, regressor.onnx and model.json into ``out`` (a new or empty folder);
    returns model.json's content."""
    out = Path(out)
    if out.is_symlink() or out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OnnxError(f"export --out {out} is not a new or empty folder: nothing was written")
    check_not_protected(out)
    model = model.cpu().eval()
    bb = model.backbone
    size, grid = bb.input_size, bb.grid_size
    out.parent.mkdir(parents=True, exist_ok=True)
    stale = remove_stale(out.parent, f".{out.name}.export-")  # of exports that were killed
    if stale:
        log.info("removed %d leftovers of interrupted exports: %s", len(stale), ", ".join(p.name for p in stale))
    tmp, lock = locked_tempdir(out.parent, f".{out.name}.export-")
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused encoder op has no ONNX form: export the plain one
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shape checks that are constant here
            images = torch.zeros(2, 3, size, size)
            torch.onnx.export(_BackboneGraph(model), (images,), str(tmp / BACKBONE), dynamo=False,
                              input_names=["images"], output_names=["local", "global"], opset_version=OPSET,
                              dynamic_axes={"images": {0: "batch"}, "local": {0: "batch"}, "global": {0: "batch"}})
            query, candidates = torch.zeros(1, bb.local_dim, grid, grid), torch.zeros(3, bb.local_dim, grid, grid)
            torch.onnx.export(_RegressorGraph(model), (query, candidates), str(tmp / REGRESSOR), dynamo=False,
                              input_names=["query", "candidates"], output_names=["points"], opset_version=OPSET,
                              dynamic_axes={"candidates": {0: "pairs"}, "points": {0: "pairs"}})
        meta = {"format": FORMAT, "version": VERSION, "backbone": bb.name, "input_size": size, "stride": bb.stride,
                "local_dim": bb.local_dim, "global_dim": bb.global_dim, "mean": list(bb.mean), "std": list(bb.std),
                "regressor": model.regressor.config.to_dict(), "identity": model_identity(model).to_dict(),
                "checkpoint": checkpoint_info.get("checkpoint"),
                "checkpoint_sha256": checkpoint_info.get("checkpoint_sha256"),
                "files_sha256": {name: file_sha256(tmp / name) for name in (BACKBONE, REGRESSOR)}, "opset": OPSET}
        with atomic_write(tmp / META, mode="w") as handle:
            json.dump(meta, handle, indent=2)
        if out.exists():
            _move_into(tmp, out)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(lock)
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return meta


def _move_into(tmp: Path, out: Path) -> None:
    """``out`` is an existing empty folder: move the files in, then drop the temporary one."""
    for item in tmp.iterdir():
        os.replace(item, out / item.name)
    tmp.rmdir()
