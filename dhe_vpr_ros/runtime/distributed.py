# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""One process, or one rank of a ``torchrun`` launch (NCCL on GPUs, gloo on CPUs): what training
and ``build-map`` share to split their work between processes and machines."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .device import resolve_device

__all__ = ["Distributed", "local_world_size", "setup_distributed"]


@dataclass
class Distributed:
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def gather(self, obj) -> list | None:
        """Every rank's ``obj`` on rank 0 (in rank order), None elsewhere; ``[obj]`` alone. A rank that is
        gone (killed) is one line on the others, not a traceback."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world if self.rank == 0 else None
        try:
            dist.gather_object(obj, out, dst=0)
        except (RuntimeError, ConnectionError) as exc:
            raise ValueError(self._lost(exc)) from None
        return out

    def agree(self, what: str, value: str) -> None:
        """ValueError on every rank, before any work, unless every rank holds the same ``value`` (a digest
        of its ``what``): ranks given other arguments or other inputs would mix them into one result."""
        if not self.enabled:
            return
        values = [None] * self.world
        try:
            dist.all_gather_object(values, value)
        except (RuntimeError, ConnectionError) as exc:
            raise ValueError(self._lost(exc)) from None
        differ = [rank for rank, other in enumerate(values) if other != values[0]]
        if differ:
            raise ValueError(f"the torchrun ranks were given different {what} (rank 0 and rank {differ[0]} differ): "
                             "every rank must run the same command on the same inputs; nothing was written")

    def _lost(self, exc: Exception) -> str:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        return (f"rank {self.rank}: another rank of this torchrun launch stopped while the ranks were exchanging "
                f"their work ({first}); nothing was written")

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def local_world_size() -> int:
    """Processes torchrun started on this machine (1 without torchrun)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))


def setup_distributed(device_name: str | None) -> Distributed:
    """This process's rank, world and device; joins the process group when torchrun started it."""
    device = resolve_device(device_name)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Distributed(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(device, dist.get_rank(), dist.get_world_size())
