# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""One process, or one rank of a torchrun launch."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..runtime.device import resolve_device
from .config import TrainConfig

__all__ = ["Distributed", "setup_distributed"]


@dataclass
class Distributed:
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup_distributed(cfg: TrainConfig) -> Distributed:
    """One process, or one rank of a torchrun launch (NCCL on GPUs, gloo on CPUs)."""
    device = resolve_device(cfg.device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Distributed(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(device, dist.get_rank(), dist.get_world_size())
