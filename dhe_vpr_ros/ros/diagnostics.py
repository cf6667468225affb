# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The node's health on /diagnostics: counters and windows the worker updates, one status the
timer publishes (rates, latency percentiles, drops, bad input, errors, map size, device, the node's
CPU use, and the median time of each stage of a frame: ``stage_<name>_ms_p50``).

CPU use is what a robot pays beside its SLAM front-end: ``cpu_cores`` (this process's CPU seconds per
second), ``cpu_share_percent`` (of the CPUs it may run on) and ``cpu_ms_per_frame`` (CPU time over the
frames answered), all over the last ``CPU_WINDOW_SEC`` seconds."""
from __future__ import annotations

import math
import os
import time
from collections import deque

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from ..runtime.threads import available_cpus

__all__ = ["CPU_WINDOW_SEC", "CpuUse", "NodeStats", "diagnostics_message"]

CPU_WINDOW_SEC = 10.0


class CpuUse:
    """This process's CPU time against wall time and frames answered, over a sliding window of samples."""

    def __init__(self, window: float = CPU_WINDOW_SEC):
        self.window = window
        self._samples: deque = deque()  # (wall, cpu seconds, frames answered)

    def sample(self, frames: int) -> tuple[float, float]:
        """(cores busy, CPU ms per frame) since the oldest sample of the window (NaN until there is one)."""
        times = os.times()
        now = (time.monotonic(), times.user + times.system, frames)
        self._samples.append(now)
        while len(self._samples) > 2 and now[0] - self._samples[1][0] >= self.window:
            self._samples.popleft()
        wall, cpu, done = self._samples[0]
        cores = (now[1] - cpu) / (now[0] - wall) if now[0] > wall else math.nan
        per_frame = (now[1] - cpu) * 1e3 / (frames - done) if frames > done else math.nan
        return cores, per_frame


class NodeStats:
    """Counters and windows behind /diagnostics (worker and callbacks update, the timer reads)."""

    def __init__(self):
        self.processed = self.bad = self.errors = self.verified = self.loop_closures = 0
        self.latencies: deque = deque(maxlen=200)
        self.stages: dict[str, deque] = {}  # stage -> its last ms (``Recognition.stages_ms``)
        self.rate_window: deque = deque(maxlen=400)
        self.last_error = ""
        self.last_error_level = DiagnosticStatus.OK
        self.cpu = CpuUse()

    def rate(self, kind: str, span: float = 5.0) -> float:
        now = time.monotonic()
        return sum(1 for k, t in list(self.rate_window) if k == kind and now - t <= span) / span

    def add_stages(self, stages_ms: dict) -> None:
        """One frame's stage times; a stage the frame did not run counts 0 (its p50 is per frame)."""
        for name in stages_ms.keys() - self.stages.keys():
            self.stages[name] = deque([0.0] * len(self.latencies), maxlen=200)
        for name, window in self.stages.items():
            window.append(float(stages_ms.get(name, 0.0)))

    def percentile(self, q: float, values=None) -> float:
        lat = sorted(self.latencies if values is None else values)
        return lat[min(len(lat) - 1, int(q * (len(lat) - 1)))] if lat else math.nan


def diagnostics_message(stats: NodeStats, slots, recognizer, device: str, reranker: str, stamp) -> DiagnosticArray:
    """One DiagnosticArray: ERROR after processing errors, WARN after bad input, else OK."""
    status = DiagnosticStatus(name="vpr_node: place recognition", hardware_id=device)
    status.level, status.message = DiagnosticStatus.OK, "ok"
    if stats.errors:
        status.level, status.message = DiagnosticStatus.ERROR, f"processing errors: {stats.errors}"
    elif stats.bad or stats.last_error_level == DiagnosticStatus.WARN:
        status.level, status.message = DiagnosticStatus.WARN, f"bad input messages: {stats.bad}"
    cores, cpu_ms = stats.cpu.sample(stats.processed)
    values = {
        "input_rate_hz": slots.received_rate(), "processed_rate_hz": stats.rate("out"),
        "frames_received": slots.received, "frames_processed": stats.processed,
        "frames_dropped": slots.dropped, "bad_messages": stats.bad, "processing_errors": stats.errors,
        "latency_ms_p50": stats.percentile(0.5), "latency_ms_p95": stats.percentile(0.95),
        "frames_verified": stats.verified, "loop_closures": stats.loop_closures,
        "loop_closures_refused_two_view": recognizer.refused_by_two_view,
        "loop_closures_unchecked_two_view": recognizer.unchecked,
        "map_places": len(recognizer), "keyframes_added": recognizer.keyframes_added, "map_full": recognizer.map_full,
        "cpu_cores": cores, "cpu_share_percent": 100.0 * cores / available_cpus(), "cpu_ms_per_frame": cpu_ms,
        "device": device, "reranker": reranker, "last_error": stats.last_error,
        **{f"stage_{name}_ms_p50": stats.percentile(0.5, window) for name, window in sorted(stats.stages.items())},
    }
    status.values = [KeyValue(key=k, value=f"{v:.2f}" if isinstance(v, float) else str(v)) for k, v in values.items()]
    array = DiagnosticArray(status=[status])
    array.header.stamp = stamp
    return array
