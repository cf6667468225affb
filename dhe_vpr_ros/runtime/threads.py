# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Thread pools, set in one place for a whole process.

A robot's CPU is shared. Left alone, torch's OpenMP threads spin while they wait for work,
OpenCV keeps a pool of its own and faiss-cpu brings a second OpenMP runtime: under load they
fight each other and the neighbours (measured: 4-8x slower with one busy core beside, where a
fair share would cost 2x). So, for every command and the node:

* ``OMP_WAIT_POLICY=PASSIVE`` (set when the package is imported, before torch loads, unless the
  user set it): idle OpenMP threads sleep instead of spinning, in both runtimes;
* torch runs ``threads`` intra-op threads and one inter-op thread (our work is one frame at a
  time: there are no independent operators to overlap);
* OpenCV and FAISS run one thread each: their work here is small (resizing one frame,
  RANSAC per candidate pair, one query against the index), and a pool costs more than it saves.

``threads`` defaults to the CPUs this process may use, at most 4: beyond that one frame's
work does not get faster, and a larger robot has other nodes to run.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

__all__ = ["ThreadSettings", "configure_threads", "default_threads", "set_wait_policy"]

log = logging.getLogger(__name__)

MAX_DEFAULT_THREADS = 4
_applied: "ThreadSettings | None" = None


def set_wait_policy() -> None:
    """Idle OpenMP threads sleep (unless the user chose otherwise); effective only before the
    OpenMP runtimes load, so the package calls it on import."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    return max(1, min(MAX_DEFAULT_THREADS, available_cpus()))


@dataclass(frozen=True)
class ThreadSettings:
    """What was applied to this process."""

    torch: int
    torch_interop: int
    opencv: int
    faiss: int
    wait_policy: str
    cpus: int

    def describe(self) -> str:
        return (f"torch {self.torch} (+{self.torch_interop} inter-op), OpenCV {self.opencv}, FAISS {self.faiss}, "
                f"OMP_WAIT_POLICY {self.wait_policy}, {self.cpus} CPUs available")


def configure_threads(threads: int | None = None) -> ThreadSettings:
    """Apply the thread settings (``threads`` None or 0: ``default_threads()``); once per
    process: a second call with another count changes torch's intra-op threads only."""
    global _applied
    import cv2
    import faiss
    import torch
    count = threads or default_threads()
    if count < 1:
        raise ValueError(f"threads must be 1 or more (0: automatic), not {threads}")
    if _applied is not None and _applied.torch == count:
        return _applied
    torch.set_num_threads(count)
    interop = torch.get_num_interop_threads()
    if _applied is None:
        try:
            torch.set_num_interop_threads(1)
            interop = 1
        except RuntimeError:  # only possible before any inter-op work started in this process
            log.debug("torch inter-op threads were already in use: left at %d", interop)
        cv2.setNumThreads(1)
        faiss.omp_set_num_threads(1)
    _applied = ThreadSettings(count, interop, cv2.getNumThreads(), faiss.omp_get_max_threads(),
                              os.environ.get("OMP_WAIT_POLICY", "(unset)"), available_cpus())
    log.info("threads: %s", _applied.describe())
    return _applied


def applied() -> ThreadSettings | None:
    """The settings applied to this process, if any."""
    return _applied
