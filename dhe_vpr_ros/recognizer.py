# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Loop-closure policy, without ROS: what the node does with each frame, testable without DDS.

``PlaceRecognizer`` wraps a ``Localizer``: it excludes places too recent to count as a loop
(``min_time_gap_sec``), verifies loop closures over the recent frames (``SequenceVerifier``:
the frames must agree on where the robot is, the place must stand out from look-alikes far
away, and the sequence score must reach ``min_score``), grows the map with keyframes
(``add_keyframes``, ``keyframe_min_interval_sec``, ``max_places``) and saves the grown map. The
node only converts messages, calls ``recognize`` and publishes the ``Recognition``.

``FrameSlots`` is the node's input buffer: one slot per camera, so a slow model always works
on the newest frame of each camera and older frames are dropped and counted, never queued.
"""
from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field, fields, replace

import numpy as np

from .localizer import Candidate, Localizer, QueryResult
from .mapdb import Place, Pose
from .sequence import SequenceSettings, SequenceVerifier, Verdict

__all__ = ["AUTO", "CALIBRATED_MIN_SCORE", "FrameSlots", "LOOP_CLOSURE_PARAMETERS", "LoopPolicy",
           "PlaceRecognizer", "Recognition", "SEQUENCE_PARAMETERS", "pose_variance_scale"]

AUTO = -1.0  # min_score: the calibrated threshold of the active re-ranker
# The sequence score each re-ranker must reach for a loop closure with the default sequence
# settings: chosen by benchmarks/calibrate_defaults.py on the real sequences (README "Loop
# closures you can trust"). Scores are inlier counts (dhe, ransac, magsac) or a cosine (none):
# the global descriptor alone reached no useful precision, so its threshold is one a cosine
# never reaches (it publishes matches, not loop closures, unless `calibrate` says otherwise).
CALIBRATED_MIN_SCORE = {"dhe": 106.0, "ransac": 127.0, "magsac": 124.0, "none": 2.0}
_SEQUENCE_FIELDS = {"sequence_length": "length", "sequence_tolerance": "tolerance",
                    "sequence_max_speed": "max_speed", "sequence_min_agreeing": "min_agreeing",
                    "min_distinctiveness": "min_distinctiveness",
                    "distinctiveness_neighbourhood": "neighbourhood"}
# The LoopPolicy fields of the sequence verification, and with min_score all that decides whether
# a match is a loop closure: what `calibrate` writes, `evaluate` takes as options and reports.
SEQUENCE_PARAMETERS = tuple(_SEQUENCE_FIELDS)
LOOP_CLOSURE_PARAMETERS = ("min_score", *SEQUENCE_PARAMETERS)


@dataclass(frozen=True)
class LoopPolicy:
    """The settings the node can change live (validated here, so the node and tests agree)."""

    min_score: float = AUTO
    min_time_gap_sec: float = 30.0
    add_keyframes: bool = False
    keyframe_min_interval_sec: float = 1.0
    max_places: int = 100000
    sequence_length: int = SequenceSettings.length
    sequence_tolerance: int = SequenceSettings.tolerance
    sequence_max_speed: float = SequenceSettings.max_speed
    sequence_min_agreeing: int = SequenceSettings.min_agreeing
    min_distinctiveness: float = SequenceSettings.min_distinctiveness
    distinctiveness_neighbourhood: int = SequenceSettings.neighbourhood

    def __post_init__(self):
        for name in ("min_time_gap_sec", "keyframe_min_interval_sec"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, not {value}")
        if not math.isfinite(self.min_score) or self.min_score < 0 and self.min_score != AUTO:
            raise ValueError(f"min_score must be -1 (the calibrated default of the re-ranker) or a finite "
                             f"number >= 0, not {self.min_score}")
        if self.max_places < 1:
            raise ValueError(f"max_places must be at least 1, not {self.max_places}")
        try:
            self.sequence()
        except ValueError as exc:  # name the policy's field, not the settings'
            message = str(exc)
            for name, short in _SEQUENCE_FIELDS.items():
                message = re.sub(rf"\b{short}\b", name, message)
            raise ValueError(message) from None

    @classmethod
    def from_mapping(cls, values: dict) -> "LoopPolicy":
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def sequence(self) -> SequenceSettings:
        return SequenceSettings(**{short: getattr(self, name) for name, short in _SEQUENCE_FIELDS.items()})

    def threshold(self, reranker: str) -> float:
        """The score a loop closure needs under ``reranker`` (the calibrated one for AUTO)."""
        return CALIBRATED_MIN_SCORE[reranker] if self.min_score == AUTO else self.min_score

    def verifies(self, verdict: Verdict, reranker: str) -> bool:
        return verdict.passes(self.sequence(), self.threshold(reranker))


def pose_variance_scale(verdict: Verdict, threshold: float, length: int) -> float:
    """How much the matched pose's variance grows with weaker evidence: 1 for a sequence score
    of twice the threshold or more with every frame of the window agreeing, growing with the
    square of the score's shortfall and with the share of frames that do not agree:
    ``(2 threshold / min(score, 2 threshold))^2 * length / max(agreeing, 1)``."""
    full = 2.0 * threshold
    score_term = (full / min(verdict.score, full)) ** 2 if full > 0 and verdict.score > 0 else 1.0
    return float(score_term * length / max(verdict.agreeing, 1))


@dataclass
class Recognition:
    """What one frame gave. ``verdict``: the sequence verifier's best hypothesis; ``accepted``:
    it was verified (``verified``: the candidate it names, usually the best one);
    ``loop_closure`` (query, map stamps in seconds) and ``pose`` are set only for a verified
    place that has them, ``pose_variance_scale`` says how much to widen the pose's covariance."""

    result: QueryResult
    stamp_ns: int
    verdict: Verdict | None = None
    accepted: bool = False
    verified: Candidate | None = None
    loop_closure: tuple[float, float] | None = None
    pose: Pose | None = None
    pose_variance_scale: float = 1.0
    keyframe_id: int | None = None

    @property
    def best(self):
        return self.result.best


class PlaceRecognizer:
    """Localizer + loop-closure policy; thread-safe (a worker recognizes, a service saves)."""

    def __init__(self, localizer: Localizer, policy: LoopPolicy = LoopPolicy()):
        self.localizer = localizer
        self.policy = policy
        self.verifier = SequenceVerifier(policy.sequence())
        self._lock = threading.Lock()
        self._stamps = localizer.database.timestamps_ns()
        self._last_keyframe_ns: int | None = None
        self.keyframes_added = 0
        self.map_full = False

    def __len__(self) -> int:
        return len(self.localizer.database)

    RANKING = ("reranker", "top_k", "refine_rounds")  # the Localizer's live settings

    def update(self, **changes) -> None:
        """Change policy fields and the ranking settings (``RANKING``) between two frames;
        ValueError, and nothing changed, when one is invalid. Other keys are ignored."""
        policy_fields = {f.name for f in fields(LoopPolicy)}
        policy = replace(self.policy, **{k: v for k, v in changes.items() if k in policy_fields})
        ranking = {k: v for k, v in changes.items() if k in self.RANKING}
        with self._lock:
            reranker = self.localizer.default_reranker
            self.localizer.configure(**ranking)
            self.policy = policy
            self.verifier.configure(policy.sequence())
            if self.localizer.default_reranker != reranker:  # the past frames' scores are on another scale
                self.verifier.reset()

    def excluded_ids(self, stamp_ns: int) -> np.ndarray | None:
        """Places stamped within ``min_time_gap_sec`` of the query: the same run, too recent
        to be a loop. Places without a stamp are never excluded."""
        gap_ns = self.policy.min_time_gap_sec * 1e9
        if not len(self._stamps) or gap_ns <= 0:
            return None
        known = self._stamps >= 0
        return np.flatnonzero(known & (np.abs(self._stamps - stamp_ns) < gap_ns))

    def recognize(self, image: np.ndarray, stamp_ns: int, source: str = "") -> Recognition:
        """Rank the map for one RGB frame, apply the policy, maybe insert it as a keyframe."""
        loc = self.localizer
        local, global_ = loc.embed([image])
        size = (int(image.shape[1]), int(image.shape[0]))
        with self._lock:
            result = loc.rank(local[0], global_[0], size, exclude_ids=self.excluded_ids(stamp_ns))
            out = self._judge(result, stamp_ns)
            if self.policy.add_keyframes:
                out.keyframe_id = self._maybe_add_keyframe(local, global_, size, source, stamp_ns)
        return out

    def _judge(self, result: QueryResult, stamp_ns: int) -> Recognition:
        """Feed the frame's candidates to the sequence verifier; a verified place closes the loop."""
        reranker = self.localizer.default_reranker
        candidates = result.candidates
        verdict = self.verifier.observe([c.place_id for c in candidates], [c.score for c in candidates])
        out = Recognition(result, stamp_ns, verdict)
        if not self.policy.verifies(verdict, reranker):
            return out
        place = candidates[verdict.candidate]
        out.accepted, out.verified, out.pose = True, place, place.place.pose
        out.pose_variance_scale = pose_variance_scale(verdict, self.policy.threshold(reranker),
                                                      self.policy.sequence_length)
        if place.place.timestamp_ns is not None:
            out.loop_closure = (stamp_ns / 1e9, place.place.timestamp_ns / 1e9)
        return out

    def _maybe_add_keyframe(self, local, global_, size, source: str, stamp_ns: int) -> int | None:
        interval_ns = self.policy.keyframe_min_interval_sec * 1e9
        if self._last_keyframe_ns is not None and stamp_ns - self._last_keyframe_ns < interval_ns:
            return None
        db = self.localizer.database
        self.map_full = len(db) >= self.policy.max_places
        if self.map_full:
            return None
        place = Place(-1, source, stamp_ns, image_size=size)
        (place_id,) = db.add(global_, local.half().cpu().numpy(), [place])
        self._stamps = np.append(self._stamps, stamp_ns)
        self._last_keyframe_ns = stamp_ns
        self.keyframes_added += 1
        return place_id

    def save(self, path: str) -> str:
        """Write the (grown) map atomically; MapError when ``path`` is not a map or not writable."""
        with self._lock:
            self.localizer.database.save(path)
            return f"saved {len(self.localizer.database)} places to {path}"


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
