# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""How the package runs on a machine: thread pools, the device, loading a model (PyTorch or an
ONNX export in onnxruntime), the newest-frame buffer, the two-stage frame pipeline, and the one
factory threads -> device -> model -> map -> Localizer.

Names are imported when first used, so a command's ``--help`` loads no torch.
"""
import importlib

from .threads import ThreadGovernor, ThreadSettings, choose_threads, configure_threads

__all__ = ["FrameSlots", "Handoff", "OnnxError", "Pipeline", "RUNTIMES", "ThreadGovernor",
           "ThreadSettings", "choose_threads", "configure_threads", "default_checkpoint",
           "export_model", "load_any_model", "load_model", "load_onnx_model", "open_localizer",
           "resolve_device"]

_LAZY = {"FrameSlots": "frame_slots", "Handoff": "pipeline", "Pipeline": "pipeline",
         "OnnxError": "onnx", "RUNTIMES": "loading", "default_checkpoint": "loading",
         "export_model": "onnx_export", "load_any_model": "loading", "load_model": "loading",
         "load_onnx_model": "onnx", "open_localizer": "factory", "resolve_device": "device"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
