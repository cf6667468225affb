# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The loop-closure settings a node runs with, checked, and their calibrated defaults.

``LoopPolicy`` holds every setting the node can change live that decides what becomes a loop
closure: the score threshold, the sequence verification (``sequence``), the two-view check of the
place about to be published (``two_view``), the time gap that keeps a run from matching its own
recent past, and how the map grows with keyframes.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

from ..map.keypoints import FEATURES
from .sequence import SequenceSettings, Verdict
from .two_view import TwoViewCheck

__all__ = ["AUTO", "CALIBRATED_MIN_SCORE", "LOOP_CLOSURE_PARAMETERS", "MAX_GUIDED", "LoopPolicy", "SEQUENCE_PARAMETERS",
           "VERIFY_FEATURES", "VERIFY_PARAMETERS", "pose_variance_scale"]

AUTO = -1.0  # min_score: the calibrated threshold of the active re-ranker
# The sequence score each re-ranker must reach for a loop closure with the default sequence
# settings and two-view check: chosen by benchmarks/calibrate_defaults.py, leaving one run out over
# the folds (doc/loop_closure.md). With the two-view check every threshold from 40 up held on every
# held-out fold, so it is 40: the inlier count below which a score is no geometric evidence
# (rerank.MIN_VERIFIED_INLIERS). RANSAC was not recorded (0.5 s a frame) and takes MAGSAC's: the same
# matches and inlier window. Scores are inlier counts (dhe, ransac, magsac) or a cosine (none): the
# global descriptor alone reached no useful precision, so its threshold is one a cosine never reaches
# (it publishes matches, not loop closures, unless `calibrate` says otherwise).
CALIBRATED_MIN_SCORE = {"dhe": 40.0, "ransac": 40.0, "magsac": 40.0, "none": 2.0}
_SEQUENCE_FIELDS = {"sequence_length": "length", "sequence_tolerance": "tolerance",
                    "sequence_max_speed": "max_speed", "sequence_min_agreeing": "min_agreeing",
                    "min_distinctiveness": "min_distinctiveness",
                    "distinctiveness_neighbourhood": "neighbourhood"}
# The LoopPolicy fields of the sequence verification, and with min_score all that decides whether
# a match is a loop closure: what `calibrate` writes, `evaluate` takes as options and reports.
SEQUENCE_PARAMETERS = tuple(_SEQUENCE_FIELDS)
VERIFY_PARAMETERS = ("verify_min_inliers", "verify_features")  # the two-view check
LOOP_CLOSURE_PARAMETERS = ("min_score", *SEQUENCE_PARAMETERS, "sequence_guided", *VERIFY_PARAMETERS)
MAX_GUIDED = 64
VERIFY_FEATURES = (100, 5000)  # ORB features detected in the frame to verify


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
    sequence_guided: int = 2  # places the strongest lines predict, re-ranked with the next frame's candidates
    verify_min_inliers: int = 40  # two-view inliers the place about to be published needs (0: no check)
    verify_features: int = FEATURES  # ORB features detected in the frame for that check

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
        if not 0 <= self.sequence_guided <= MAX_GUIDED:
            raise ValueError(f"sequence_guided must be from 0 to {MAX_GUIDED}, not {self.sequence_guided}")
        if not VERIFY_FEATURES[0] <= self.verify_features <= VERIFY_FEATURES[1]:
            raise ValueError(f"verify_features must be from {VERIFY_FEATURES[0]} to {VERIFY_FEATURES[1]}, not "
                             f"{self.verify_features}")
        self.two_view()  # checks verify_min_inliers
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

    def two_view(self) -> TwoViewCheck:
        return TwoViewCheck(self.verify_min_inliers)

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
