# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""What a training run keeps besides its weights: where it stands (resumable to the exact step),
its history, its config, and its scalars for TensorBoard."""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import atomic_write
from .config import TrainConfig

__all__ = ["RunState", "Stop", "fmt", "meta", "tensorboard_writer", "write_config", "write_history"]

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """Where a run stands; saved in last.pt so that --resume continues at the exact step."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    best: tuple | None = None
    history: list = field(default_factory=list)
    stop_requested: bool = False  # set by SIGINT / SIGTERM; the loop saves and stops

    def last_metrics(self) -> dict:
        """The latest validation in the history ({} before the first)."""
        return next((h["val"] for h in reversed(self.history) if h["val"]), {})


class Stop(Exception):
    """Raised in the loop after a requested stop has saved the state."""


def fmt(values: dict) -> str:
    """Metrics as one log line."""
    return ", ".join(f"{k} {v:.3f}" for k, v in values.items())


def meta(cfg: TrainConfig, epoch: int, step: int) -> dict:
    """What a checkpoint of this run says about where it comes from."""
    data = cfg.dataset or (",".join(cfg.images) if cfg.images else None) or f"{cfg.bag}:{cfg.topic}"
    return {"trained_by": "dhe_vpr_ros train", "stage": cfg.stage, "epoch": epoch, "step": step,
            "seed": cfg.seed, "data": data}


def tensorboard_writer(out: Path, cfg: TrainConfig):
    """A TensorBoard writer under ``out/tensorboard``, or None (off, or not installed)."""
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed (pip install tensorboard); scalars are only in history.jsonl")
        return None
    return SummaryWriter(str(out / "tensorboard"))


def write_config(out: Path, cfg: TrainConfig) -> None:
    """Every setting of the run, as ``config.json`` (what --resume reads back)."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "config.json", mode="w") as handle:
        handle.write(json.dumps(asdict(cfg), indent=2))


def write_history(out: Path, history: list) -> None:
    """One JSON line per validated epoch, as ``history.jsonl``."""
    with atomic_write(out / "history.jsonl", mode="w") as handle:
        handle.write("".join(json.dumps(h) + "\n" for h in history))
