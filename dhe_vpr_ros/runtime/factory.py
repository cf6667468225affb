# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Setting up for a command or the node, in one place: threads -> device -> model -> map -> Localizer."""
from __future__ import annotations

import os

import torch

from ..map.database import MapDatabase
from ..method.identity import model_identity
from ..method.localizer import Localizer
from .device import resolve_device
from .loading import load_any_model
from .threads import configure_threads

__all__ = ["open_localizer"]


def open_localizer(checkpoint: str | os.PathLike | None = None, backbone: str | None = None,
                   device: str | None = "cpu", map_path: str | os.PathLike | None = None, *,
                   new_map=None, logger=None, threads: int | None = None, runtime: str = "auto",
                   onnx: str | os.PathLike | None = None, precision: str = "float", **options):
    """The one setup every command and the node share: apply the thread settings
    (``threads.configure_threads``), resolve the device, load the model,
    open the map at ``map_path`` (checked against the model) or make a new one
    (``new_map(model, build_info)``, default: an empty in-memory map), and tie them into a
    ``Localizer``; ``precision`` int8 runs the export's int8 backbone; ``options`` (reranker, top_k,
    refine_rounds, regressor_candidates) go to it."""
    settings = configure_threads(threads)
    on_onnxruntime = runtime == "onnxruntime" or precision == "int8"  # int8 runs in onnxruntime only
    dev = resolve_device(device, logger) if not on_onnxruntime else torch.device("cpu")
    model, build_info = load_any_model(checkpoint or None, backbone or None, dev, logger, runtime, onnx,
                                       settings.torch if threads else None, precision)
    if map_path:
        database = MapDatabase.open(map_path, expect=model_identity(model))
    elif new_map is not None:
        database = new_map(model, build_info)
    else:
        database = MapDatabase(model_identity(model), build_info=build_info)
    return Localizer(model, database, dev, **options)
