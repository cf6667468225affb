# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Where the ONNX export of a checkpoint lives, and ``runtime: auto``: its export through
onnxruntime when ``export`` wrote one, else PyTorch.

``export`` without ``--out`` writes into the user's cache folder, one folder per checkpoint
hash (``$XDG_CACHE_HOME/dhe_vpr_ros/onnx/SHA``, ``~/.cache`` when unset); an export written next
to a checkpoint (``CHECKPOINT.onnx/``) is found too. An export is used only when its model.json
records the active checkpoint's hash: a retrained checkpoint never runs an older export.
``precision: int8`` runs the export's int8 backbone (``export --int8``); PyTorch has none, so int8
without such an export is refused, never run as float (a map records which of the two embedded it).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..method.models.checkpoint import file_sha256
from ..reading import InputError, read_text

__all__ = ["INT8_HOW", "cache_folder", "export_folders", "find_export", "resolve_runtime"]

INT8_HOW = ("write one with `python -m dhe_vpr_ros export --int8 --map MAP` (or --calibration-images DIR: frames "
            "of your camera)")

log = logging.getLogger(__name__)


def cache_folder(sha256: str) -> Path:
    """Where ``export`` puts the export of the checkpoint with this hash by default."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dhe_vpr_ros" / "onnx" / sha256[:16]


def export_folders(checkpoint: Path, sha256: str) -> list[Path]:
    """The folders an export of ``checkpoint`` may be in, in the order they are tried."""
    return [checkpoint.with_name(checkpoint.name + ".onnx"), cache_folder(sha256)]


def find_export(checkpoint: Path, sha256: str, int8: bool = False) -> Path | None:
    """The first export folder whose model.json records ``sha256`` as its checkpoint's hash (and, with
    ``int8``, holds an int8 backbone)."""
    for folder in export_folders(checkpoint, sha256):
        try:
            meta = json.loads(read_text(folder / "model.json", "model.json", 1 << 20))
        except (OSError, InputError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get("format") == "dhe_vpr_ros.onnx" and meta.get("checkpoint_sha256") \
                == sha256 and (not int8 or isinstance(meta.get("int8"), dict)):
            return folder
    return None


def resolve_runtime(runtime: str, checkpoint: Path | None, onnx: str | None, device: str | None,
                    logger=None, precision: str = "float") -> tuple[str, str | None]:
    """(runtime, onnx folder) to load: ``auto`` becomes onnxruntime with the active checkpoint's
    export when there is one (on the CPU, with onnxruntime installed), else torch; the log says which.
    ``precision`` int8 needs onnxruntime and an export with an int8 backbone (ValueError otherwise)."""
    if precision == "int8":
        return _resolve_int8(runtime, checkpoint, onnx, logger or log)
    if runtime != "auto":
        return runtime, onnx
    logger = logger or log
    if onnx:
        return "onnxruntime", onnx
    if (device or "cpu").strip().startswith("cuda"):
        logger.info("runtime auto: PyTorch (device %s)", device)
        return "torch", None
    if checkpoint is None:
        logger.info("runtime auto: PyTorch (no checkpoint to export)")
        return "torch", None
    sha = file_sha256(checkpoint)
    folder = find_export(checkpoint, sha)
    if folder is None:
        logger.info("runtime auto: PyTorch (no export of %s; `python -m dhe_vpr_ros export` writes one to %s)",
                    checkpoint.name, cache_folder(sha))
        return "torch", None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        logger.info("runtime auto: PyTorch (an export is at %s, but onnxruntime is not installed)", folder)
        return "torch", None
    logger.info("runtime auto: onnxruntime, the export of %s at %s", checkpoint.name, folder)
    return "onnxruntime", str(folder)


def _resolve_int8(runtime: str, checkpoint: Path | None, onnx: str | None, logger) -> tuple[str, str]:
    if runtime == "torch":
        raise ValueError("precision int8 runs in onnxruntime, not PyTorch: set runtime auto or onnxruntime")
    if onnx:
        return "onnxruntime", onnx
    if checkpoint is None:
        raise ValueError(f"precision int8 needs an export of the checkpoint with an int8 backbone: {INT8_HOW}")
    sha = file_sha256(checkpoint)
    folder = find_export(checkpoint, sha, int8=True)
    if folder is None:
        floating = find_export(checkpoint, sha)
        if floating is not None:  # export writes only into a new or empty folder: say where else to write
            raise ValueError(f"precision int8: the export of {checkpoint.name} at {floating} has no int8 backbone; "
                             f"write one elsewhere with `python -m dhe_vpr_ros export --int8 --map MAP --out DIR` "
                             f"and give onnx_dir DIR (--onnx), or remove {floating} and export --int8 into it")
        raise ValueError(f"precision int8: no export of {checkpoint.name} holds an int8 backbone; {INT8_HOW}")
    logger.info("precision int8: onnxruntime, the int8 export of %s at %s", checkpoint.name, folder)
    return "onnxruntime", str(folder)
