# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The node's input buffer: one slot per camera, so a slow model always works on the newest
frame of each camera, and older frames are dropped and counted, never queued."""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

__all__ = ["FrameSlots"]


@dataclass
class _Pending:
    msg: object
    source: str
    received: float


@dataclass
class FrameSlots:
    """The newest unprocessed frame of each source; ``put`` replaces (and counts as dropped) an
    older one, ``take`` blocks until a frame or ``close``. Fair: the oldest waiting source first."""

    received: int = 0
    dropped: int = 0
    _slots: dict = field(default_factory=dict)
    _closed: bool = False
    _wake: threading.Condition = field(default_factory=threading.Condition)
    _arrivals: deque = field(default_factory=lambda: deque(maxlen=1000))

    def put(self, msg, source: str) -> None:
        now = time.monotonic()
        with self._wake:
            self.received += 1
            self._arrivals.append(now)
            if source in self._slots:
                self.dropped += 1
            self._slots[source] = _Pending(msg, source, now)
            self._wake.notify()

    def received_rate(self, span: float = 5.0) -> float:
        """Frames per second that arrived over the last ``span`` seconds."""
        now = time.monotonic()
        with self._wake:
            return sum(1 for t in self._arrivals if now - t <= span) / span

    def take(self, timeout: float | None = None) -> _Pending | None:
        """The next frame, or None once closed (or after ``timeout`` seconds with none)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._wake:
            while not self._slots and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._wake.wait(0.5 if remaining is None else min(0.5, remaining))
            if self._closed:
                return None
            source = min(self._slots, key=lambda s: self._slots[s].received)
            return self._slots.pop(source)

    def waiting(self) -> bool:
        """Whether a frame waits to be taken."""
        with self._wake:
            return bool(self._slots)

    def clear(self) -> None:
        with self._wake:
            self._slots.clear()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify_all()

    def reopen(self) -> None:
        with self._wake:
            self._closed = False
            self._slots.clear()
