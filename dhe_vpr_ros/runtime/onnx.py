# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The models as ONNX files, and a model that runs them through onnxruntime.

``export`` (``onnx_export``) writes, into a new folder:

* ``backbone.onnx``: normalised images (B, 3, S, S) -> local grids (B, C, H, W) and global
  descriptors (B, D), both L2-normalised;
* ``regressor.onnx``: a query grid (1, C, H, W) and K candidate grids (K, C, H, W) -> the 4
  point pairs (K, 8, 2) of each homography (the correlation volume is inside the graph);
* ``backbone.int8.onnx`` (``export --int8``): the backbone quantised to int8 (``quantize``), run
  with ``precision: int8``; model.json's ``int8`` records its map identity (precision int8, the
  graph's hash) and how it was calibrated;
* ``model.json``: input size, normalisation, grid geometry, the regressor's config, the map
  identity (the backbone weights' hash, so that maps built with either runtime are one) and the
  checkpoint's file hash.

The batch dimension is dynamic in both graphs. ``OnnxVPRModel`` has the interface of
``VPRModel`` that the Localizer and the re-rankers use (``embed``, ``homographies``,
``backbone`` attributes), so the whole pipeline runs on it unchanged; the 4-point DLT stays in
torch (tiny). onnxruntime's providers are taken in the order CUDA/TensorRT where installed,
then CPU. A Jetson user builds a TensorRT engine from the same files (README).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..json_fields import field, numbers
from ..method.geometry import homography_from_four_points
from ..method.models import CheckpointError
from ..method.models.checkpoint import file_sha256
from ..reading import InputError, read_bytes, read_text

__all__ = ["BACKBONE", "FORMAT", "INT8_BACKBONE", "MAX_GRAPH_BYTES", "META", "OPSET", "REGRESSOR", "VERSION",
           "OnnxError", "OnnxVPRModel", "SessionPool", "file_sha256", "load_onnx_model"]

log = logging.getLogger(__name__)

FORMAT = "dhe_vpr_ros.onnx"
VERSION = 1
BACKBONE, REGRESSOR, META = "backbone.onnx", "regressor.onnx", "model.json"
INT8_BACKBONE = "backbone.int8.onnx"
MAX_GRAPH_BYTES = 1 << 31  # a graph larger than this is not one of ours (the paper's preset is ~0.5 GB)
OPSET = 17


class OnnxError(CheckpointError):
    """An exported model folder that cannot be used: missing, malformed, or for another model."""


@dataclass
class _Backbone:
    """The attributes of a Backbone the pipeline reads."""

    name: str
    input_size: int
    stride: int
    local_dim: int
    global_dim: int
    mean: tuple
    std: tuple

    @property
    def grid_size(self) -> int:
        return self.input_size // self.stride


@dataclass
class _Features:
    local: torch.Tensor
    global_: torch.Tensor


class _RegressorInfo:
    def __init__(self, config):
        self.config = config

    def cpu_chunk(self) -> int:
        return 32  # onnxruntime runs a whole query's candidates best in one pass


class OnnxVPRModel:
    """VPRModel's interface on onnxruntime sessions; ``providers``: onnxruntime's, best first;
    ``precision``: float, or int8 when it runs the export's int8 backbone."""

    def __init__(self, folder: Path, meta: dict, backbone_sessions: "SessionPool", regressor_sessions: "SessionPool",
                 precision: str = "float"):
        from ..method.identity import ModelIdentity
        from ..method.models.homography_regressor import RegressorConfig
        self.folder, self.meta, self.precision = folder, meta, precision
        self.backbone = _Backbone(meta["backbone"], meta["input_size"], meta["stride"], meta["local_dim"],
                                  meta["global_dim"], tuple(meta["mean"]), tuple(meta["std"]))
        self.regressor = _RegressorInfo(RegressorConfig.from_dict(meta["regressor"]))
        identity = meta["int8"]["identity"] if precision == "int8" else meta["identity"]
        self._identity = ModelIdentity.from_dict(identity)
        self._backbone_sessions, self._regressor_sessions = backbone_sessions, regressor_sessions
        self.providers = backbone_sessions.get().get_providers()

    # the nn.Module calls the Localizer makes
    def to(self, device):
        return self

    def eval(self):  # noqa: A003 - nn.Module's name, which the Localizer calls
        return self

    @property
    def config(self) -> dict:
        return {"backbone": self.backbone.name, "regressor": self.regressor.config.to_dict(), "runtime": "onnxruntime",
                "precision": self.precision}

    def embed(self, images: torch.Tensor) -> _Features:
        session = self._backbone_sessions.get()
        local, global_ = session.run(None, {"images": images.detach().cpu().float().numpy()})
        return _Features(torch.from_numpy(local), torch.from_numpy(global_))

    def homographies(self, query_local: torch.Tensor, candidate_local: torch.Tensor,
                     chunk_size: int | None = None) -> torch.Tensor:
        query = query_local.detach().cpu().float().numpy()
        query = query[None] if query.ndim == 3 else query[:1]
        candidates = candidate_local.detach().cpu().float().numpy()
        (points,) = self._regressor_sessions.get().run(None, {"query": np.ascontiguousarray(query),
                                                              "candidates": np.ascontiguousarray(candidates)})
        points = torch.from_numpy(points).to(candidate_local.device)
        return homography_from_four_points(points[:, :4], points[:, 4:])


def _providers() -> list[str]:
    import onnxruntime as ort
    available = ort.get_available_providers()
    order = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    return [p for p in order if p in available] or available


class SessionPool:
    """The sessions of one graph, one per intra-op thread count. onnxruntime fixes a session's threads when it
    is made, while the node gives a stage all free cores when the other stage is idle and half of them when
    both work (``runtime.pipeline``): each run takes the session of the calling thread's torch thread count
    (the count ``ThreadGovernor`` set), or of the user's fixed ``threads``. On a GPU provider (CUDA,
    TensorRT) the CPU thread count does not matter: one session serves every count."""

    def __init__(self, graph: bytes, path: Path, threads: int | None = None):
        self._graph, self._path, self._threads = graph, path, threads
        self._sessions: dict[int, object] = {}
        self._lock = threading.Lock()
        self._one = False  # one session for every count
        first = self.get()  # a graph onnxruntime refuses is refused now, not at the first frame
        self._one = first.get_providers()[0] != "CPUExecutionProvider"

    def get(self):
        count = self._threads or max(1, torch.get_num_threads())
        with self._lock:
            if self._one:
                return next(iter(self._sessions.values()))
            if count not in self._sessions:
                self._sessions[count] = _session(self._graph, self._path, count)
            return self._sessions[count]


def _session(graph: bytes, path: Path, threads: int):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # onnxruntime's threads spin after each run by default: on a shared CPU that takes the cores
    # torch's refinement and the neighbours need next (the OMP_WAIT_POLICY=PASSIVE of onnxruntime)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(graph, options, providers=_providers())
    except Exception as exc:  # onnxruntime raises its own types for malformed graphs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxError(f"{path} is not a usable ONNX model: {first[:300]}") from None


def load_onnx_model(folder: str | os.PathLike, expect_backbone: str | None = None,
                    threads: int | None = None, precision: str = "float") -> OnnxVPRModel:
    """An exported model folder -> a model on onnxruntime (its int8 backbone with ``precision`` int8);
    OnnxError naming the file otherwise."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise OnnxError("runtime onnxruntime needs the onnxruntime package (pip install onnxruntime, or "
                        "onnxruntime-gpu for CUDA/TensorRT)") from None
    folder = Path(folder)
    meta = read_meta(folder)
    if expect_backbone and meta.get("backbone") != expect_backbone:
        raise OnnxError(f"{folder} holds the {meta.get('backbone')!r} backbone, not {expect_backbone!r}")
    if precision == "int8" and "int8" not in meta:
        raise OnnxError(f"{folder} holds no int8 backbone (precision int8): export again with --int8, or set "
                        "precision float")
    backbone = INT8_BACKBONE if precision == "int8" else BACKBONE
    graphs = {name: _graph(folder, meta, name) for name in (backbone, REGRESSOR)}
    pools = [SessionPool(graphs[name], folder / name, threads) for name in (backbone, REGRESSOR)]
    try:
        model = OnnxVPRModel(folder, meta, *pools, precision=precision)
    except (KeyError, TypeError, ValueError) as exc:
        raise OnnxError(f"{folder / META}: {exc}") from None
    _check_inputs(model, folder, backbone)
    return model


def read_meta(folder: Path) -> dict:
    """model.json of an export, every field checked (OnnxError naming the file and the field)."""
    meta_file = folder / META
    try:
        meta = json.loads(read_text(meta_file, META, 1 << 20))
    except FileNotFoundError:
        raise OnnxError(f"no exported model at {folder}: {META} is missing (write one with `dhe_vpr_ros export`)") \
            from None
    except (OSError, InputError, json.JSONDecodeError) as exc:
        raise OnnxError(f"{meta_file} is unreadable: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise OnnxError(f"{meta_file} is not a dhe_vpr_ros ONNX export (format {meta.get('format')!r})"
                        if isinstance(meta, dict) else f"{meta_file} holds no object")
    _check_meta(meta, meta_file)
    return meta


def _graph(folder: Path, meta: dict, name: str) -> bytes:
    """A graph's bytes, read once through the read door and checked against the hash model.json records."""
    try:
        data = read_bytes(folder / name, f"exported {name}", MAX_GRAPH_BYTES)
    except FileNotFoundError:
        raise OnnxError(f"{folder}: {name} is missing, or not a regular file") from None
    except InputError as exc:
        raise OnnxError(f"{folder}: {name} is missing, or not a regular file ({exc})") from None
    recorded = (meta.get("files_sha256") or {}).get(name)
    if recorded is None:  # every export since hashes exist writes them all: a file without is not known to belong
        raise OnnxError(f"{folder / META}: field 'files_sha256' records no hash for {name}: export again")
    if recorded != hashlib.sha256(data).hexdigest():
        raise OnnxError(f"{folder / name} is not the file this export wrote (its hash differs from {META}): "
                        "export again")
    return data


def _check_meta(meta: dict, meta_file: Path) -> None:
    """OnnxError naming the field when model.json has a field of the wrong type or out of range."""
    from ..method.identity import ModelIdentity
    from ..method.models.homography_regressor import RegressorConfig
    try:
        for name in ("input_size", "stride", "local_dim", "global_dim"):
            if not 0 < field(meta, name, int) <= 65536:
                raise ValueError(f"field {name!r} is {meta[name]!r}: out of range")
        if meta["input_size"] % meta["stride"]:
            raise ValueError(f"field 'stride' ({meta['stride']}) does not divide 'input_size' ({meta['input_size']})")
        field(meta, "backbone", str)
        for name in ("mean", "std"):
            numbers(meta, name, 3, optional=False)
        if not all(v > 0 for v in meta["std"]):
            raise ValueError(f"field 'std' is {meta['std']!r}: not positive")
        for name in ("checkpoint", "checkpoint_sha256"):
            field(meta, name, str, optional=True)
        hashes = field(meta, "files_sha256", dict, optional=True) or {}
        for name, value in hashes.items():
            if not isinstance(value, str):
                raise ValueError(f"field 'files_sha256' has {value!r} for {name!r}, not a hash string")
        if ModelIdentity.from_dict(field(meta, "identity", dict)).precision != "float":
            raise ValueError("field 'identity' has precision int8: the float backbone's identity is float")
        RegressorConfig.from_dict(field(meta, "regressor", dict))
        _check_int8(meta)
    except (ValueError, TypeError, KeyError) as exc:
        raise OnnxError(f"{meta_file}: {exc}") from None


def _check_int8(meta: dict) -> None:
    """model.json's ``int8`` record, when there is one: the file, its identity and how it was calibrated."""
    from ..method.identity import ModelIdentity
    int8 = field(meta, "int8", dict, optional=True)
    if int8 is None:
        return
    if field(int8, "backbone", str) != INT8_BACKBONE:
        raise ValueError(f"field 'int8.backbone' is {int8['backbone']!r}, not {INT8_BACKBONE!r}")
    identity = ModelIdentity.from_dict(field(int8, "identity", dict))
    floating = ModelIdentity.from_dict(meta["identity"])
    if identity.precision != "int8" or identity.local_shape != floating.local_shape or \
            identity.global_dim != floating.global_dim or identity.backbone != floating.backbone:
        raise ValueError("field 'int8.identity' does not describe an int8 form of this export's backbone")
    if identity.weights_sha256 != (meta.get("files_sha256") or {}).get(INT8_BACKBONE):
        raise ValueError(f"field 'int8.identity' names another graph than the {INT8_BACKBONE} it records")
    for name, low, high in (("calibration_frames", 1, 1_000_000), ("float_blocks", 0, 1000)):
        if not low <= field(int8, name, int) <= high:
            raise ValueError(f"field 'int8.{name}' is {int8[name]!r}: out of range {low}..{high}")


def _check_inputs(model: OnnxVPRModel, folder: Path, backbone: str) -> None:
    """The graphs' declared inputs must fit model.json (a file from another export is refused)."""
    bb = model.backbone
    images = model._backbone_sessions.get().get_inputs()[0].shape
    if list(images[1:]) != [3, bb.input_size, bb.input_size]:
        raise OnnxError(f"{folder / backbone} takes images of shape {images}, but {META} says "
                        f"3x{bb.input_size}x{bb.input_size}: the files are from different exports")
    candidates = model._regressor_sessions.get().get_inputs()[1].shape
    if list(candidates[1:]) != [bb.local_dim, bb.grid_size, bb.grid_size]:
        raise OnnxError(f"{folder / REGRESSOR} takes grids of shape {candidates}, but {META} says "
                        f"{bb.local_dim}x{bb.grid_size}x{bb.grid_size}: the files are from different exports")
