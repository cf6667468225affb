# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""A frame's work in two stages on two threads of one process: while the second stage works on frame n
(re-ranking, the loop-closure policy, publishing), the first prepares frame n+1 (conversion and the
backbone). On a CPU of two cores the network then runs on one core while the re-ranking runs on the
other, instead of both taking turns on two.

The stages hand over through ``Handoff``, a slot of depth one that blocks the first stage until the
second takes what it made: no frame is embedded and then thrown away, the second stage sees frames in
the order they were prepared, and the first always takes the newest frame when it starts the next one
(``FrameSlots``). Each stage's threads follow its share of the free cores (``ThreadGovernor``'s
``share``) while the other stage works, and all of them while it is idle: a lone frame (a slow camera)
goes through both stages at the speed of the whole CPU instead of half of it. A stage never ends the
pipeline by raising: its ``on_error`` hook decides what to report.
"""
from __future__ import annotations

import threading
from typing import Callable

from .threads import ThreadGovernor

__all__ = ["Handoff", "Pipeline"]


class Handoff:
    """One item passed from a producer thread to a consumer thread; ``put`` waits until the slot is free."""

    def __init__(self):
        self._item = None
        self._full = False
        self._closed = False
        self._working = False  # the consumer took an item and has not called ``done`` yet
        self._cond = threading.Condition()

    def put(self, item) -> bool:
        """Hand ``item`` over (waiting while the last one is not taken); False once closed."""
        with self._cond:
            while self._full and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            self._item, self._full = item, True
            self._cond.notify_all()
            return True

    def take(self):
        """The next item, or None once closed and empty."""
        with self._cond:
            while not self._full and not self._closed:
                self._cond.wait()
            if not self._full:
                return None
            item, self._item, self._full, self._working = self._item, None, False, True
            self._cond.notify_all()
            return item

    def done(self) -> None:
        """The consumer finished what it took last."""
        with self._cond:
            self._working = False

    def occupied(self) -> bool:
        """Whether an item waits in the slot or the consumer is still on the last one it took."""
        with self._cond:
            return self._full or self._working

    def close(self) -> None:
        """No more items: a waiting ``put`` returns False, ``take`` returns what is left, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Pipeline:
    """``take()`` gives the next input (None: stop); ``first(input)`` returns what the second stage needs (None:
    nothing for it); ``second(prepared)`` finishes the frame. ``on_error(stage, input, exception)`` is called
    when a stage raises (the pipeline goes on). ``threads``: the user's fixed count (None: the free cores).
    ``waiting()``: whether an input is waiting to be taken (the second stage then shares the cores)."""

    def __init__(self, take: Callable, first: Callable, second: Callable, on_error: Callable,
                 threads: int | None = None, logger=None, name: str = "frames", waiting: Callable = lambda: False):
        self.take, self.first, self.second, self.on_error, self.waiting = take, first, second, on_error, waiting
        self.threads, self.logger, self.name = threads, logger, name
        self._handoff = Handoff()
        self._workers: list[threading.Thread] = []
        self._preparing = False  # the first stage holds an input (set from when it takes one until none waits)

    def start(self) -> None:
        self._handoff = Handoff()
        self._workers = [threading.Thread(target=self._run_first, name=f"{self.name}_prepare", daemon=True),
                         threading.Thread(target=self._run_second, name=f"{self.name}_finish", daemon=True)]
        for worker in self._workers:
            worker.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for both stages to end (after ``take`` returned None); each gets ``timeout`` seconds."""
        for worker in self._workers:
            worker.join(timeout)
        self._workers = []

    def _next_input(self):
        """``take()``, with the first stage counted as preparing from the end of one frame to the next while
        inputs wait (so the second stage, starting meanwhile, shares the cores instead of taking them all)."""
        if not self.waiting():
            self._preparing = False
        item = self.take()
        self._preparing = item is not None
        return item

    def _run_first(self) -> None:
        governor = ThreadGovernor(self.threads, logger=self.logger, share=(0, 2))
        try:
            while (item := self._next_input()) is not None:
                governor.adjust(alone=not self._handoff.occupied())
                try:
                    prepared = self.first(item)
                except Exception as exc:  # keep going: the hook reports it
                    self.on_error("first", item, exc)
                    continue
                if prepared is not None and not self._handoff.put(prepared):
                    return
        finally:
            self._preparing = False
            self._handoff.close()

    def _run_second(self) -> None:
        governor = ThreadGovernor(self.threads, logger=self.logger, share=(1, 2))
        while (prepared := self._handoff.take()) is not None:
            governor.adjust(alone=not self._preparing and not self.waiting())
            try:
                self.second(prepared)
            except Exception as exc:
                self.on_error("second", prepared, exc)
            finally:
                self._handoff.done()
