# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Loop-closure policy, without ROS: what the node does with each frame, testable without DDS.

``PlaceRecognizer`` wraps a ``Localizer``: it excludes places too recent to count as a loop
(``min_time_gap_sec``), verifies loop closures over the recent frames (``SequenceVerifier``:
the frames must agree on where the robot is, the place must stand out from look-alikes far
away, and the sequence score must reach ``min_score``), grows the map with keyframes
(``add_keyframes``, ``keyframe_min_interval_sec``, ``max_places``) and saves the grown map. The
node only converts messages, calls ``recognize`` and publishes the ``Recognition``.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, fields, replace

import numpy as np

from ..map.records import Place, Pose
from ..method.localizer import Candidate, Localizer, QueryResult
from .policy import LoopPolicy, pose_variance_scale
from .sequence import SequenceVerifier, Verdict

__all__ = ["PlaceRecognizer", "Recognition"]


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

    RANKING = ("reranker", "top_k", "refine_rounds", "regressor_candidates")  # the Localizer's live settings

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
            guided = self.verifier.predict(self.policy.sequence_guided) if self.policy.sequence_length > 1 else []
            result = loc.rank(local[0], global_[0], size, exclude_ids=self.excluded_ids(stamp_ns), include_ids=guided)
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
