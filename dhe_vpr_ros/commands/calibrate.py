# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""``calibrate``: the loop-closure settings that reach a target precision on the user's own
labelled run, written as a ROS 2 parameters file (``loop.calibration`` chooses them)."""
from __future__ import annotations

import argparse
import logging

from ..loop.calibration import calibrate, check_params_target, params_yaml, write_params
from ..loop.evaluation import record
from ..loop.policy import LoopPolicy
from ..method.rerank import DEFAULT_REFINE_ROUNDS, DEFAULT_REGRESSED, MAX_REFINE_ROUNDS, RERANKERS
from .arguments import add_model_arguments, add_run_arguments, count, number
from .evaluate import open_run

__all__ = ["add_arguments", "run"]

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--reranker", choices=RERANKERS, default="dhe")
    parser.add_argument("--top-k", type=count(1, 1000), default=16,
                        help="candidates re-ranked per frame (the node's top_k)")
    parser.add_argument("--refine-rounds", type=count(0, MAX_REFINE_ROUNDS), default=DEFAULT_REFINE_ROUNDS,
                        help=argparse.SUPPRESS)
    parser.add_argument("--regressor-candidates", type=count(0, 1000), default=DEFAULT_REGRESSED,
                        help=argparse.SUPPRESS)
    parser.add_argument("--target-precision", type=number(0.0, 1.0, above=True), default=1.0,
                        help="precision the settings must reach on this run (default 1.0)")
    parser.add_argument("--output", "-o", required=True, help="parameters file to write (YAML)")
    parser.add_argument("--batch-size", type=count(1, 4096), default=16)
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    check_params_target(args.output)  # before the run is played, not after
    localizer, labelled = open_run(args, [args.reranker])
    labelled.label_with_map(localizer.database.places)
    if len(labelled.queries) < 2:
        raise ValueError("a run needs at least 2 query frames")
    policy = LoopPolicy()
    database = localizer.database
    features = policy.verify_features if getattr(database, "has_keypoints", False) else None
    if features is None:
        log.warning("the map holds no keypoints (built before the keypoint layer): the two-view check is not "
                    "calibrated (verify_min_inliers 0); rebuild the map to calibrate it")
    recorded = record(localizer, labelled.queries, [args.reranker], args.top_k, guidance=policy, features=features)
    cal = calibrate(labelled, recorded.for_sequence(args.reranker), args.reranker, args.top_k, args.target_precision,
                    inliers=recorded.two_view(database))
    text = params_yaml(cal, labelled.description)
    write_params(args.output, text)
    log.info("wrote %s: min_score %g, sequence_length %d, min_distinctiveness %g, verify_min_inliers %d: precision "
             "%.3f, recall %.3f (single-frame score alone: recall %.3f)", args.output, cal.policy.min_score,
             cal.policy.sequence_length, cal.policy.min_distinctiveness, cal.policy.verify_min_inliers, cal.precision,
             cal.recall, cal.single_frame_recall)
    return 0
