# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Loop closure without ROS: the policy and its defaults, sequence verification, the recogniser
the node calls, and measuring it (ground truth, precision, evaluation, calibration)."""
from .calibration import Calibration, calibrate
from .evaluation import evaluate, record, report_of
from .groundtruth import GroundTruthError, LabelledRun, folder_pair, geo_run
from .policy import AUTO, CALIBRATED_MIN_SCORE, LoopPolicy
from .precision import precision_curve, summarize
from .recognizer import PlaceRecognizer, Recognition
from .sequence import SequenceSettings, SequenceVerifier, Verdict

__all__ = ["AUTO", "CALIBRATED_MIN_SCORE", "Calibration", "GroundTruthError", "LabelledRun", "LoopPolicy",
           "PlaceRecognizer", "Recognition", "SequenceSettings", "SequenceVerifier", "Verdict", "calibrate", "evaluate",
           "folder_pair", "geo_run", "precision_curve", "record", "report_of", "summarize"]
