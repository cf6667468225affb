# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Sequence verification of loop closures, without ROS.

A robot's frames arrive in order, and a map built from a run is ordered too (place ids follow
the route). True matches of consecutive frames therefore lie on a line in the frame x place
plane, advancing at the robot's speed relative to the map (0 when it stands still), while a
look-alike place matches one frame and not its neighbours. As SeqSLAM does, but on the
re-ranked top-K of each frame instead of a full difference matrix:

* every place among the current frame's candidates within ``tolerance`` of its first-ranked
  place is a hypothesis, at every speed from ``-max_speed`` to ``max_speed`` places per frame
  (the current frame must agree too: past frames alone never carry a line on after the robot
  left it, e.g. into a part of the route the map does not hold);
* a hypothesis' sequence score is the mean, over the last ``length`` frames, of the best score
  each frame gave a place within ``tolerance`` places of where the line says the robot was
  (0 where it gave none, also for frames not seen yet: a revisit waits for the window to fill);
* ``agreeing``: how many of those frames had their first-ranked place on the line;
* distinctiveness: the best hypothesis' score over the best score of any other candidate's
  line more than ``neighbourhood`` places away (neighbouring places look alike by construction and are no
  evidence against the match; a ratio near 1 is aliasing).

A frame is verified when its best hypothesis reaches the score threshold, ``min_agreeing`` and
``min_distinctiveness``. With ``length`` 1 this is the single-frame score gate.

Cost: each frame compares its K candidates' lines at every speed with the K candidates of each
past frame of the window: ``speeds x (length - 1) x K x K`` (``SequenceSettings.work``), about
5 ns each on a laptop core, and as many float64 values at once per past frame. Settings whose
work exceeds ``MAX_WORK`` (2 million: about 10-15 ms and tens of MB a frame) are refused where
they are set (``check_work``: the node's parameters, ``evaluate``, ``calibrate``).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

__all__ = ["MAX_WORK", "SequenceSettings", "SequenceVerifier", "Verdict"]

MAX_WORK = 2_000_000  # speeds x past frames x candidates x candidates, per frame


@dataclass(frozen=True)
class SequenceSettings:
    """What the verifier needs; checked on construction (ValueError naming the field)."""

    # the node's defaults, chosen by benchmarks/calibrate_defaults.py on the folds (doc/loop_closure.md): with the
    # two-view check (LoopPolicy.verify_min_inliers) a single frame and no ratio held on every held-out fold
    length: int = 1  # frames in the window, the current one included (1: single frame)
    tolerance: int = 2  # places a supporting match may lie off the line
    max_speed: float = 2.0  # places per frame, either direction
    min_agreeing: int = 1  # frames of the window whose first-ranked place lies on the line (at most length)
    min_distinctiveness: float = 1.0  # best / best outside the neighbourhood (1: off)
    neighbourhood: int = 6  # places around the best one that do not count against it

    LIMITS = {"length": (1, 100), "tolerance": (0, 1000), "max_speed": (0.0, 1000.0), "min_agreeing": (0, 100),
              "min_distinctiveness": (1.0, 1000.0), "neighbourhood": (0, 100000)}

    def __post_init__(self):
        for name, (low, high) in self.LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not low <= value <= high:
                raise ValueError(f"{name} must be a number from {low} to {high}, not {value!r}")
            if isinstance(low, int) and value != int(value):
                raise ValueError(f"{name} must be a whole number, not {value!r}")

    def work(self, candidates: int) -> int:
        """Line-candidate comparisons per frame with ``candidates`` (top-K) candidates a frame."""
        return int(self.speeds().size) * max(self.length - 1, 1) * candidates * candidates

    def check_work(self, candidates: int) -> None:
        """ValueError saying what to lower when a frame's search would exceed ``MAX_WORK``."""
        work = self.work(candidates)
        if work > MAX_WORK:
            raise ValueError(f"the sequence search would make {work:,} comparisons a frame ({self.speeds().size} "
                             f"speeds x {max(self.length - 1, 1)} past frames x {candidates} x {candidates} "
                             f"candidates), over the budget of {MAX_WORK:,}: lower top_k, sequence_length or "
                             "sequence_max_speed")

    def speeds(self) -> np.ndarray:
        """The speeds tried: fine enough that the line drifts by at most one place over the window."""
        if self.length == 1 or self.max_speed == 0:
            return np.zeros(1)
        step = min(0.5, 1.0 / (self.length - 1))
        half = np.arange(0.0, self.max_speed + 1e-9, step)
        return np.unique(np.r_[-half[::-1], half])


@dataclass(frozen=True)
class Verdict:
    """The best sequence hypothesis for one frame. ``place_id`` -1 when the frame had no
    candidates; ``candidate``: its index in the frame's candidate list; ``score``: the sequence
    score; ``distinctiveness``: inf when no hypothesis lies outside the neighbourhood."""

    place_id: int
    candidate: int
    score: float
    agreeing: int
    speed: float
    distinctiveness: float
    frames: int  # frames in the window so far (at most the length)

    def passes(self, settings: SequenceSettings, min_score: float) -> bool:
        """Agreeing frames are asked for up to the window's length (a window of 1 frame needs 1)."""
        return (self.place_id >= 0 and self.score >= min_score
                and self.agreeing >= min(settings.min_agreeing, settings.length)
                and self.distinctiveness >= settings.min_distinctiveness)


NO_VERDICT = Verdict(-1, -1, -math.inf, 0, 0.0, 0.0, 0)


class SequenceVerifier:
    """Keeps the last frames' candidates and judges each new frame (one per ``observe``)."""

    def __init__(self, settings: SequenceSettings = SequenceSettings()):
        self.settings = settings
        self._history: deque = deque(maxlen=max(settings.length - 1, 0))
        self._lines: tuple | None = None  # (next places, scores) of the last frame's best line per candidate

    def configure(self, settings: SequenceSettings) -> None:
        """New settings, keeping as much history as the new window holds."""
        self.settings = settings
        self._history = deque(self._history, maxlen=max(settings.length - 1, 0))

    def reset(self) -> None:
        """Forget the past frames (another map, another re-ranker's score scale)."""
        self._history.clear()
        self._lines = None

    def predict(self, count: int) -> list[int]:
        """Where the ``count`` strongest lines of the last frame put the next one (place ids, best
        first): re-ranked with the next frame's candidates, a line keeps real support on a frame
        whose retrieval missed its place (SeqSLAM sees every place; the top-K alone does not)."""
        if not count or self._lines is None:
            return []
        places, scores = self._lines
        out: list[int] = []
        for i in np.argsort(-scores, kind="stable"):
            if scores[i] <= 0:
                break
            if (place := int(places[i])) not in out:
                out.append(place)
            if len(out) == count:
                break
        return out

    def observe(self, place_ids, scores) -> Verdict:
        """Judge a frame from its candidates (best first: place ids and scores), then remember it."""
        ids = np.asarray(place_ids, dtype=np.int64).reshape(-1)
        values = np.maximum(np.nan_to_num(np.asarray(scores, dtype=np.float64).reshape(-1), nan=0.0), 0.0)
        self._lines = None
        verdict = self._judge(ids, values) if ids.size else NO_VERDICT
        if self._history.maxlen:
            self._history.appendleft((ids, values))
        return verdict

    def _judge(self, ids: np.ndarray, values: np.ndarray) -> Verdict:
        s = self.settings
        speeds = s.speeds()
        lags = np.arange(1, s.length)
        # support[a, v]: sum over past frames of the best score near anchor a's line at speed v;
        # offset[a, v]: how far those supporting places lie from the line (breaks ties between speeds)
        shape = (ids.size, speeds.size)
        support, offset = np.zeros(shape), np.zeros(shape)
        agreeing = np.ones(shape, dtype=np.int64) * (np.abs(ids - ids[0]) <= s.tolerance)[:, None]
        for lag, (past_ids, past_values) in zip(lags, self._history):
            if not past_ids.size:
                continue
            distance = np.abs(past_ids[None, None, :] - (ids[:, None] - speeds[None, :] * lag)[..., None])  # (A,V,K)
            near = distance <= s.tolerance + 1e-9
            weighted = np.where(near, past_values[None, None, :], -1.0)
            pick = weighted.argmax(axis=-1)[..., None]
            found = np.take_along_axis(near, pick, -1)[..., 0]
            support += np.where(found, np.take_along_axis(weighted, pick, -1)[..., 0], 0.0)
            offset += np.where(found, np.take_along_axis(distance, pick, -1)[..., 0], 0.0)
            agreeing += near[..., 0]  # the past frame's first-ranked place is on the line
        total = (values[:, None] + support) / s.length
        best_per_anchor = total.max(axis=1)
        speed_per_anchor = speeds[(total - 1e-9 * np.abs(speeds)[None, :]).argmax(axis=1)]  # ties: the slowest
        self._lines = (np.rint(ids + speed_per_anchor).astype(np.int64), best_per_anchor)
        # the current frame must agree too: only places near its first-ranked one are hypotheses
        # (else the past frames alone would carry a line on after the robot left it)
        eligible = np.where((np.abs(ids - ids[0]) <= s.tolerance)[:, None], total, -np.inf)
        a, v = np.unravel_index(np.lexsort((offset.ravel(), -agreeing.ravel(), -eligible.ravel()))[0], shape)
        far = np.abs(ids - ids[a]) > s.neighbourhood
        rival = best_per_anchor[far].max() if far.any() else 0.0
        ratio = total[a, v] / rival if rival > 0 else math.inf
        return Verdict(int(ids[a]), int(a), float(total[a, v]), int(agreeing[a, v]), float(speeds[v]), ratio,
                       1 + sum(1 for _ in zip(lags, self._history)))
