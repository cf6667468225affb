# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Where the ONNX export of a checkpoint lives, and ``runtime: auto``: its export through
onnxruntime when ``export`` wrote one, else PyTorch.

``export`` without ``--out`` writes into the user's cache folder, one folder per checkpoint
hash (``$XDG_CACHE_HOME/dhe_vpr_ros/onnx/SHA``, ``~/.cache`` when unset); an export written next
to a checkpoint (``CHECKPOINT.onnx/``) is found too. An export is used only when its model.json
records the active checkpoint's hash: a retrained checkpoint never runs an older export.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..method.models.checkpoint import file_sha256
from ..reading import InputError, read_text

__all__ = ["cache_folder", "export_folders", "find_export", "resolve_runtime"]

log = logging.getLogger(__name__)


def cache_folder(sha256: str) -> Path:
    """Where ``export`` puts the export of the checkpoint with this hash by default."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dhe_vpr_ros" / "onnx" / sha256[:16]


def export_folders(checkpoint: Path, sha256: str) -> list[Path]:
    """The folders an export of ``checkpoint`` may be in, in the order they are tried."""
    return [checkpoint.with_name(checkpoint.name + ".onnx"), cache_folder(sha256)]


def find_export(checkpoint: Path, sha256: str) -> Path | None:
    """The first export folder whose model.json records ``sha256`` as its checkpoint's hash."""
    for folder in export_folders(checkpoint, sha256):
        try:
            meta = json.loads(read_text(folder / "model.json", "model.json", 1 << 20))
        except (OSError, InputError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get("format") == "dhe_vpr_ros.onnx" and meta.get("checkpoint_sha256") \
                == sha256:
            return folder
    return None


def resolve_runtime(runtime: str, checkpoint: Path | None, onnx: str | None, device: str | None,
                    logger=None) -> tuple[str, str | None]:
    """(runtime, onnx folder) to load: ``auto`` becomes onnxruntime with the active checkpoint's
    export when there is one (on the CPU, with onnxruntime installed), else torch; the log says which."""
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
