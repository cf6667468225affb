# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Thread pools, set in one place for a whole process, from the cores it can really use.

A robot's CPU is shared. Measured on a 2-core CPU (doc/speed.md): OpenMP threads that sleep as
soon as they are idle (``OMP_WAIT_POLICY=PASSIVE``) cost 10-25 % on an idle machine; threads that
always spin (``ACTIVE``) burn a whole core while the node waits for the next frame and, beside a
busy neighbour, make every step wait for a thread the kernel has not scheduled. libgomp's own
default (spin a few hundred microseconds, then sleep) is as fast as ``ACTIVE`` when the cores are
free and burns nothing while waiting. What costs 2-3x under load is a team of more threads than
free cores. So, for every command and the node:

* the wait policy is left to libgomp's default (a user's ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``
  is kept and reported);
* torch runs as many intra-op threads as cores are free (``choose_threads``): the CPUs this process
  may use (its affinity, a cgroup CPU quota) less what the other processes keep busy on them,
  measured over 0.2 s when the thread settings are applied and, in the node, again every few
  seconds while it runs (``ThreadGovernor``); at most 4 (one frame's work gains nothing beyond);
* NumPy's BLAS (OpenBLAS, process-wide) the same count: a compact map's grids are decoded by one
  matrix product per frame, 3.4 ms on one thread beside a busy core and 16 ms on two;
* one inter-op thread; OpenCV and FAISS one each (their work here is small).

A user's ``--threads`` (the node's ``threads``) fixes the count. OpenMP's thread count belongs to
the thread that runs the work: the node's inference thread applies it itself (``ThreadGovernor``),
a count set in another thread does not reach it.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MAX_DEFAULT_THREADS", "CpuSample", "ThreadGovernor", "ThreadSettings", "available_cpus", "busy_beside",
           "choose_threads", "configure_threads", "cpu_quota", "sample_cpus", "set_blas_threads", "share_of"]

log = logging.getLogger(__name__)

MAX_DEFAULT_THREADS = 4
SAMPLE_SECONDS = 0.2  # how long the load beside is measured at start
IGNORED_LOAD = 0.25  # a neighbour using less than this share of a core does not take it away
_applied: "ThreadSettings | None" = None


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _quota_files(root: Path, membership: Path) -> list[tuple[Path, Path | None]]:
    """(quota file, period file or None) of this process's cgroup and its ancestors, v2 and v1."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return []
    files = []
    for line in lines:
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: cpu.max holds "quota period" or "max period"
            base, name, period = root, "cpu.max", None
        elif "cpu" in controllers.split(","):  # v1: mounted as cpu,cpuacct (cpu a link to it) or cpu
            mounts = [root / controllers] + [root / c for c in controllers.split(",")]
            base = next((m for m in mounts if m.is_dir()), mounts[0])
            name, period = "cpu.cfs_quota_us", "cpu.cfs_period_us"
        else:
            continue
        folder = base / path.lstrip("/")
        while True:
            files.append((folder / name, folder / period if period else None))
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return files


def cpu_quota(root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPUs a cgroup quota lets this process use (the tightest of its cgroup and ancestors), or
    None; ``membership``: the process's /proc/PID/cgroup, ``root``: where the cgroup trees are mounted."""
    quotas = []
    for quota_file, period_file in _quota_files(root, membership):
        try:
            fields = quota_file.read_text().split()
            if period_file is not None:
                fields.append(period_file.read_text().strip())
            if fields[0] not in ("max", "-1") and float(fields[1]) > 0:
                quotas.append(float(fields[0]) / float(fields[1]))
        except (OSError, ValueError, IndexError):
            continue
    return min(quotas) if quotas else None


@dataclass(frozen=True)
class CpuSample:
    """Busy and total time of this process's CPUs (kernel ticks), this process's own CPU seconds, and when."""

    busy: float
    total: float
    own: float
    wall: float
    cpus: int


def sample_cpus() -> CpuSample:
    """A reading of /proc/stat for the CPUs in this process's affinity (None of it where there is no /proc)."""
    try:
        allowed = {f"cpu{i}" for i in os.sched_getaffinity(0)}
    except (AttributeError, OSError):
        allowed = None
    busy = total = 0.0
    try:
        with open("/proc/stat") as stat:
            for line in stat:
                name, *values = line.split()
                if not name.startswith("cpu") or name == "cpu" or allowed is not None and name not in allowed:
                    continue
                ticks = [float(v) for v in values[:8]]
                total += sum(ticks)
                busy += sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    except OSError:
        pass
    times = os.times()
    return CpuSample(busy, total, times.user + times.system, time.monotonic(), available_cpus())


def busy_beside(before: CpuSample, after: CpuSample) -> float:
    """How many of this process's CPUs other processes kept busy between two samples (0 when unknown)."""
    elapsed, ticks = after.wall - before.wall, after.total - before.total
    if elapsed <= 0 or ticks <= 0:
        return 0.0
    busy_cpus = (after.busy - before.busy) / ticks * after.cpus
    own_cpus = (after.own - before.own) / elapsed
    return max(0.0, busy_cpus - own_cpus)


def choose_threads(cpus: int, quota: float | None, beside: float, requested: int | None = None,
                   cap: int = MAX_DEFAULT_THREADS) -> int:
    """Intra-op threads: ``requested`` when the user gave a count, else the free cores: ``cpus``
    (at most ``quota``) less ``beside`` busy with others (a neighbour under ``IGNORED_LOAD`` of a
    core does not count), at least 1 and at most ``cap``."""
    if requested:
        return requested
    usable = float(cpus) if quota is None else min(float(cpus), quota)
    free = math.floor(usable - beside + IGNORED_LOAD)
    return max(1, min(cap, free))


@dataclass(frozen=True)
class ThreadSettings:
    """What was applied to this process, and why."""

    torch: int
    torch_interop: int
    opencv: int
    faiss: int
    blas: int
    wait_policy: str
    cpus: int
    quota: float | None = None
    beside: float = 0.0
    requested: int | None = None

    def describe(self) -> str:
        why = "as asked" if self.requested else (
            f"free cores: {self.cpus} CPUs" + (f", quota {self.quota:g}" if self.quota is not None else "")
            + f", {self.beside:.1f} busy beside")
        return (f"torch {self.torch} (+{self.torch_interop} inter-op; {why}), BLAS {self.blas}, OpenCV "
                f"{self.opencv}, FAISS {self.faiss}, OMP_WAIT_POLICY {self.wait_policy}")


def set_blas_threads(count: int) -> int:
    """Every loaded BLAS (NumPy's OpenBLAS) to ``count`` threads, process-wide; returns ``count``."""
    from threadpoolctl import threadpool_limits
    threadpool_limits(count, user_api="blas")
    return count


def _wait_policy() -> str:
    policy = os.environ.get("OMP_WAIT_POLICY")
    return policy if policy else "libgomp default (spin briefly, then sleep)"


def configure_threads(threads: int | None = None) -> ThreadSettings:
    """Apply the thread settings (``threads`` None or 0: the free cores, measured now) to this
    process and to the calling thread; a later call with another count changes torch's threads only."""
    global _applied
    import cv2
    import faiss
    import torch
    if threads is not None and threads < 0:
        raise ValueError(f"threads must be 1 or more (0: automatic), not {threads}")
    if _applied is not None and (threads or None) == _applied.requested:
        return _applied  # the same request again (automatic: measured once; the node's governor follows the load)
    quota, cpus, beside = cpu_quota(), available_cpus(), 0.0
    if not threads:
        start = sample_cpus()
        time.sleep(SAMPLE_SECONDS)
        beside = busy_beside(start, sample_cpus())
    count = choose_threads(cpus, quota, beside, threads or None)
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
                              set_blas_threads(count), _wait_policy(),
                              cpus, quota, beside, threads or None)
    log.info("threads: %s", _applied.describe())
    return _applied


def applied() -> ThreadSettings | None:
    """The settings applied to this process, if any."""
    return _applied


def share_of(count: int, share: tuple[int, int]) -> int:
    """Part ``index`` of ``count`` threads split between ``parts`` stages that run at once (at least 1
    each; the earlier stages get the remainder): 2 of 2 -> 1 + 1, 3 -> 2 + 1, 1 -> 1 + 1."""
    index, parts = share
    return max(1, (count + parts - 1 - index) // parts)


class ThreadGovernor:
    """Keeps the calling thread's torch threads at the free cores while a long job runs (the node's
    inference threads call ``adjust`` before each frame). It measures the load beside from the time
    since its last look (at most every ``period`` seconds, no sleeping); a user's fixed count is the
    count and never follows the load. ``share`` (index, parts): this thread is one of ``parts`` stages
    working at once, and takes its part of the count (``share_of``) while the others work; ``adjust(alone=True)``
    gives it the whole count (the other stages idle: a lone frame of a slow camera gets every free core).
    NumPy's BLAS threads (one setting for the process, and not cheap to change) follow the first stage's
    share only when the count changes."""

    def __init__(self, requested: int | None = None, period: float = 2.0, logger=None,
                 share: tuple[int, int] = (0, 1)):
        self.requested, self.period, self.share = requested or None, period, share
        self.logger = logger or log
        self.threads: int | None = None  # the count for all stages together
        self.mine: int | None = None  # what this thread runs now
        self._blas: int | None = None  # the count NumPy's BLAS threads were last set for
        self._last: CpuSample | None = None

    def adjust(self, alone: bool = False) -> int:
        """Apply this thread's count (the whole count when ``alone``, else its share; the count changes when
        the load beside changed); returns the count for all stages."""
        import torch
        if self.threads is None:
            now = sample_cpus()
            settings = applied()
            self.threads = self.requested or (settings.torch if settings is not None else
                                              choose_threads(now.cpus, cpu_quota(), 0.0))
            self._last = now
        elif not self.requested and time.monotonic() - self._last.wall >= self.period:
            now = sample_cpus()  # /proc/stat is read once a period, not on every frame
            beside = busy_beside(self._last, now)
            self._last = now
            count = choose_threads(now.cpus, cpu_quota(), beside)
            if count != self.threads:
                self.logger.info("threads: %d -> %d (%.1f of %d CPUs busy beside)", self.threads, count, beside,
                                 available_cpus())
                self.threads = count
        mine = self.threads if alone else share_of(self.threads, self.share)
        if mine != self.mine:
            torch.set_num_threads(mine)
            self.mine = mine
        if self.share[0] == 0 and self._blas != self.threads:  # the first stage's share, set when the count changes
            set_blas_threads(share_of(self.threads, self.share))
            self._blas = self.threads
        return self.threads
