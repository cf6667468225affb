# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Where a frame's time goes: wall time of named stages, so that a report says why a re-ranker costs
what it costs on a scene (how many cells match, how many candidates the regressor sees), not one number."""
from __future__ import annotations

import contextlib
import time

import torch

__all__ = ["Stages", "clock"]


def clock(device: torch.device) -> float:
    """perf_counter after the device's queued work, so timings are real on a GPU too."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class Stages:
    """Milliseconds per named stage of one call (``ms``), added up when a stage runs more than once."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.ms: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = clock(self.device)
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (clock(self.device) - start) * 1e3
