# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Loop-closure policy, without ROS: what the node does with each frame, testable without DDS.

``PlaceRecognizer`` wraps a ``Localizer``: it excludes places too recent to count as a loop
(``min_time_gap_sec``), verifies loop closures over the recent frames (``SequenceVerifier``:
the frames must agree on where the robot is, the place must stand out from look-alikes far
away, and the sequence score must reach ``min_score``), checks the one place about to be
published by two-view geometry (``verify_min_inliers``, ``two_view``), grows the map with
keyframes (``add_keyframes``, ``keyframe_min_interval_sec``, ``max_places``) and saves the grown
map. The node only converts messages, calls ``recognize`` and publishes the ``Recognition``.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, fields, replace

import numpy as np

from ..map.keypoints import FEATURES, Keypoints, describe
from ..map.records import Place, Pose
from ..method.localizer import Candidate, Localizer, QueryResult
from ..method.timing import Stages
from .policy import LoopPolicy, pose_variance_scale
from .sequence import SequenceVerifier, Verdict
from .two_view import place_inliers

__all__ = ["FrameFeatures", "PlaceRecognizer", "Recognition"]

log = logging.getLogger(__name__)


@dataclass
class Recognition:
    """What one frame gave. ``verdict``: the sequence verifier's best hypothesis; ``accepted``:
    it was verified (``verified``: the candidate it names, usually the best one);
    ``loop_closure`` (query, map stamps in seconds) and ``pose`` are set only for a verified
    place that has them, ``pose_variance_scale`` says how much to widen the pose's covariance.
    ``two_view_inliers``: what the two-view check counted (None: not checked); ``refused``: the
    sequence verification accepted the place and the two-view check did not. ``stages_ms``: where the
    frame's time went (embed, retrieve, the re-ranking's stages, two_view, keyframe)."""

    result: QueryResult
    stamp_ns: int
    verdict: Verdict | None = None
    accepted: bool = False
    verified: Candidate | None = None
    loop_closure: tuple[float, float] | None = None
    pose: Pose | None = None
    pose_variance_scale: float = 1.0
    keyframe_id: int | None = None
    two_view_inliers: int | None = None
    refused: bool = False
    stages_ms: dict = field(default_factory=dict)

    @property
    def best(self):
        return self.result.best


class FrameFeatures:
    """A frame's ORB keypoints, detected when first asked for: only for a frame about to close a
    loop, and for a keyframe (the map's layer), never for every frame."""

    def __init__(self, image: np.ndarray):
        self.image = image
        self._found: dict[int, Keypoints] = {}

    def keypoints(self, features: int = FEATURES) -> Keypoints:
        if features not in self._found:
            self._found[features] = describe(self.image, features)
        return self._found[features]


class PlaceRecognizer:
    """Localizer + loop-closure policy; thread-safe (a worker recognizes, a service saves)."""

    def __init__(self, localizer: Localizer, policy: LoopPolicy = LoopPolicy(), logger=log):
        self.localizer = localizer
        self.policy = policy
        self.verifier = SequenceVerifier(policy.sequence())
        self._lock = threading.Lock()
        self._stamps = localizer.database.timestamps_ns()
        self._last_keyframe_ns: int | None = None
        self._log = logger
        self.keyframes_added = 0
        self.map_full = False
        self.refused_by_two_view = 0  # loop closures the two-view check refused
        self.unchecked = 0  # loop closures to places without keypoints (maps built before the layer)

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

    def recognize(self, image: np.ndarray, stamp_ns: int, source: str = "", embedded=None) -> Recognition:
        """Rank the map for one RGB frame, apply the policy, maybe insert it as a keyframe. ``embedded``:
        the frame's (local grids, global descriptors) from ``Localizer.embed``, when already computed."""
        loc = self.localizer
        stages = Stages(loc.device)
        if embedded is None:
            with stages("embed"):
                embedded = loc.embed([image])
        local, global_ = embedded
        size = (int(image.shape[1]), int(image.shape[0]))
        frame = FrameFeatures(image)
        with self._lock:
            guided = self.verifier.predict(self.policy.sequence_guided) if self.policy.sequence_length > 1 else []
            result = loc.rank(local[0], global_[0], size, exclude_ids=self.excluded_ids(stamp_ns), include_ids=guided)
            with stages("two_view"):
                out = self._judge(result, stamp_ns, frame)
            if self.policy.add_keyframes:
                with stages("keyframe"):
                    out.keyframe_id = self._maybe_add_keyframe(local, global_, size, source, stamp_ns, frame)
        out.stages_ms = {**stages.ms, "retrieve": result.timings_ms.get("retrieve", 0.0), **result.stages_ms}
        return out

    def _judge(self, result: QueryResult, stamp_ns: int, frame: FrameFeatures) -> Recognition:
        """Feed the frame's candidates to the sequence verifier; a verified place that passes the
        two-view check closes the loop."""
        reranker = self.localizer.default_reranker
        candidates = result.candidates
        verdict = self.verifier.observe([c.place_id for c in candidates], [c.score for c in candidates])
        out = Recognition(result, stamp_ns, verdict)
        if not self.policy.verifies(verdict, reranker):
            return out
        place = candidates[verdict.candidate]
        if not self._two_view_passes(place.place_id, frame, out):
            return out
        out.accepted, out.verified, out.pose = True, place, place.place.pose
        out.pose_variance_scale = pose_variance_scale(verdict, self.policy.threshold(reranker),
                                                      self.policy.sequence_length)
        if place.place.timestamp_ns is not None:
            out.loop_closure = (stamp_ns / 1e9, place.place.timestamp_ns / 1e9)
        return out

    def _two_view_passes(self, place_id: int, frame: FrameFeatures, out: Recognition) -> bool:
        """The two-view check of the place about to be published (True when it is off, or the map
        holds no keypoints for the place: that is said once)."""
        check = self.policy.two_view()
        if not check.enabled:
            return True
        inliers = place_inliers(check, self.localizer.database, place_id, frame.keypoints(self.policy.verify_features))
        out.two_view_inliers = inliers
        if inliers is None:
            if not self.unchecked:
                self._log.warning("the map holds no keypoints for place %d (built before the keypoint layer): its loop "
                                  "closures and those of such places are published without the two-view check; "
                                  "rebuild the map to check them", place_id)
            self.unchecked += 1
            return True
        if check.passes(inliers):
            return True
        out.refused = True
        self.refused_by_two_view += 1
        return False

    def _maybe_add_keyframe(self, local, global_, size, source: str, stamp_ns: int,
                            frame: FrameFeatures) -> int | None:
        interval_ns = self.policy.keyframe_min_interval_sec * 1e9
        if self._last_keyframe_ns is not None and stamp_ns - self._last_keyframe_ns < interval_ns:
            return None
        db = self.localizer.database
        self.map_full = len(db) >= self.policy.max_places
        if self.map_full:
            return None
        place = Place(-1, source, stamp_ns, image_size=size)
        (place_id,) = db.add(global_, local.half().cpu().numpy(), [place], keypoints=[frame.keypoints(FEATURES)])
        self._stamps = np.append(self._stamps, stamp_ns)
        self._last_keyframe_ns = stamp_ns
        self.keyframes_added += 1
        return place_id

    def save(self, path: str) -> str:
        """Write the (grown) map atomically; MapError when ``path`` is not a map or not writable."""
        with self._lock:
            self.localizer.database.save(path)
            return f"saved {len(self.localizer.database)} places to {path}"
