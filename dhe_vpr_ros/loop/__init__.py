# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Loop closure without ROS: the policy and its defaults, sequence verification, the two-view check,
the recogniser the node calls, and measuring it (ground truth, precision, evaluation, calibration,
transfer)."""
from .calibration import Calibration, calibrate
from .evaluation import evaluate, record, report_of
from .groundtruth import GroundTruthError, LabelledRun, folder_pair, geo_run
from .policy import AUTO, CALIBRATED_MIN_SCORE, LoopPolicy
from .precision import precision_curve, summarize
from .recognizer import PlaceRecognizer, Recognition
from .sequence import SequenceSettings, SequenceVerifier, Verdict
from .transfer import Choice, Fold, FoldSpec, RunFigures, choose, leave_one_run_out
from .two_view import PairInliers, TwoViewCheck, place_inliers

__all__ = ["AUTO", "CALIBRATED_MIN_SCORE", "Calibration", "Choice", "Fold", "FoldSpec", "GroundTruthError",
           "LabelledRun", "LoopPolicy", "PairInliers", "PlaceRecognizer", "Recognition", "RunFigures",
           "SequenceSettings", "SequenceVerifier", "TwoViewCheck", "Verdict", "calibrate", "choose", "evaluate",
           "folder_pair", "geo_run", "leave_one_run_out", "place_inliers", "precision_curve", "record", "report_of",
           "summarize"]
