# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The loop-closure settings that reach a target precision on the user's own run.

A labelled run of the robot (a reference run and a query run of one route, or a geo split) is
played through retrieval and one re-ranker in order, once. Then every combination of sequence
length, distinctiveness ratio and two-view inlier minimum on a small grid is replayed through the
node's sequence verification and two-view check (cheap: no network involved; each frame's pair is
matched once), and for each the score threshold that keeps precision at the target with the most
recall is found. The winner (most recall; on a tie the shorter window, the lower ratio and the
stricter two-view check) is written as a ROS 2
parameters file that ``ros2 launch dhe_vpr_ros vpr.launch.py params_file:=FILE`` loads, with the
measured precision and recall in its comments.

The threshold is put halfway between the lowest score the winner accepts and the next lower
score on the run, so the same frames are accepted here and the margin is shared both ways.
"""
from __future__ import annotations

import datetime
import json
import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from ..atomic import atomic_write, check_output, is_stream
from ..reading import read_bytes
from .evaluation import sequence_answers
from .policy import LOOP_CLOSURE_PARAMETERS, LoopPolicy
from .precision import precision_curve
from .sequence import MAX_WORK

__all__ = ["Calibration", "DISTINCTIVENESS", "MARKER", "MIN_INLIERS", "SEQUENCE_LENGTHS", "calibrate",
           "check_params_target",
           "one_line", "operating_point", "params_yaml", "write_params"]

log = logging.getLogger(__name__)

MARKER = "# dhe_vpr_ros calibrate"  # first line of every file this command writes
SEQUENCE_LENGTHS = (1, 2, 3, 4, 5, 6, 8, 10)
DISTINCTIVENESS = (1.0, 1.1, 1.25, 1.5, 2.0)
MIN_INLIERS = (0, 10, 15, 20, 25, 30, 40)  # two-view inliers (0: no check); searched where the map has keypoints


@dataclass(frozen=True)
class Calibration:
    """The chosen settings and what they measured on the run they were chosen on."""

    policy: LoopPolicy
    reranker: str
    top_k: int
    target: float
    precision: float
    recall: float
    accepted: int
    queries: int
    positives: int
    single_frame_recall: float  # thresholding the single-frame score alone, at the same target


def operating_point(answers, target: float) -> tuple[float, float, float, int] | None:
    """(threshold, precision, recall, accepted) with the most recall at precision >= target, the
    threshold halfway to the next lower score; None when no threshold reaches the target."""
    curve = precision_curve(answers.scores, answers.correct, answers.has_positive)
    ok = np.flatnonzero(curve.precision >= target - 1e-12)
    if not ok.size or curve.recall[ok].max() <= 0:
        return None
    best = ok[np.argmax(curve.recall[ok])]  # argmax: the first, i.e. highest threshold, of equal recalls
    lower = curve.thresholds[best + 1] if best + 1 < curve.thresholds.size else 0.0
    threshold = float((curve.thresholds[best] + max(lower, 0.0)) / 2)
    accepted = int((np.isfinite(answers.scores) & (answers.scores >= threshold)).sum())
    return threshold, float(curve.precision[best]), float(curve.recall[best]), accepted


def calibrate(run, ranked, reranker: str, top_k: int, target: float, base: LoopPolicy = LoopPolicy(),
              lengths=SEQUENCE_LENGTHS, ratios=DISTINCTIVENESS, inliers=None, min_inliers=MIN_INLIERS) -> Calibration:
    """Grid-search sequence length, distinctiveness and (with ``inliers``, the two-view lookup of the
    recorded run) the two-view minimum over a recorded run (``ranked``, in query order)."""
    if not 0 < target <= 1:
        raise ValueError(f"--target-precision must be above 0 and at most 1, not {target}")
    if len(ranked) < 2:
        raise ValueError(f"a run of {len(ranked)} frame cannot be calibrated: give at least 2 query frames")
    results = []
    for length in lengths:
        for ratio in ratios:
            for minimum in min_inliers if inliers is not None else (0,):
                policy = replace(base, sequence_length=length, min_distinctiveness=ratio, verify_min_inliers=minimum)
                if policy.sequence().work(top_k) > MAX_WORK:
                    log.info("sequence length %d skipped: over the search budget with top-K %d", length, top_k)
                    break
                point = operating_point(sequence_answers(run, ranked, policy, reranker, inliers), target)
                if point is not None:
                    results.append((point[2], -length, -ratio, minimum, policy, point))
    single_frame = replace(base, sequence_length=1, min_distinctiveness=1.0, verify_min_inliers=0)
    single = operating_point(sequence_answers(run, ranked, single_frame, reranker), target)
    if not results:
        raise ValueError(f"no setting reaches precision {target:g} on this run with {reranker}: even the highest "
                         "score is a wrong place; lower --target-precision, or check that the reference and query "
                         "runs are of the same route and in order")
    recall, _, _, _, policy, (threshold, precision, _, accepted) = max(results, key=lambda r: r[:4])
    answers = sequence_answers(run, ranked, policy, reranker, inliers)
    return Calibration(replace(policy, min_score=round(threshold, 4)), reranker, top_k, target, precision, recall,
                       accepted,
                       len(ranked), int(answers.has_positive.sum()), single[2] if single else 0.0)


def one_line(text: str) -> str:
    """``text`` for a comment line: control characters (a newline in a folder's name) and bytes
    that are not UTF-8 are escaped, so what the user named can never end the comment."""
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in str(text))


def params_yaml(cal: Calibration, source: str, node_name: str = "/**") -> str:
    """The parameters file: the ranking and loop-closure settings, measured figures as comments."""
    values = {"reranker": cal.reranker, "top_k": cal.top_k,
              **{name: getattr(cal.policy, name) for name in LOOP_CLOSURE_PARAMETERS}}
    floats = {f.name for f in fields(LoopPolicy) if f.type in ("float", float)}
    lines = [MARKER + f" on {datetime.date.today().isoformat()}: re-ranker {cal.reranker}, target precision "
                      f"{cal.target:g}",
             f"# run: {one_line(source)}",
             f"# measured on that run: precision {cal.precision:.3f}, recall {cal.recall:.3f} "
             f"({cal.accepted} loop closures, {cal.queries} queries, {cal.positives} with a true place);",
             f"# the single-frame score alone reaches recall {cal.single_frame_recall:.3f} at that precision.",
             "# Use: ros2 launch dhe_vpr_ros vpr.launch.py params_file:=THIS_FILE map_path:=MAP",
             f"{node_name}:", "  ros__parameters:"]
    for name, value in values.items():
        shown = json.dumps(float(value) if name in floats else value)
        lines.append(f"    {name}: {shown}")
    return "\n".join(lines) + "\n"


def check_params_target(path: str | Path) -> None:
    """ValueError / OSError naming ``path`` unless a parameters file may be written there: a new
    file, one this command wrote, or a stream (``-``, /dev/stdout)."""
    if is_stream(path):
        return
    target = Path(path)
    if target.is_dir() and not target.is_symlink():
        raise ValueError(f"{target} is a directory; give a file name for the parameters, e.g. {target}/vpr.yaml")
    check_output(target)
    if target.exists():
        first = read_bytes(target, "parameters file", 1 << 24).decode("utf-8", "replace").split("\n", 1)[0]
        if not first.startswith(MARKER):
            raise ValueError(f"refusing to replace {target}: it was not written by calibrate (nothing was changed); "
                             "choose a new file name")


def write_params(path: str | Path, text: str) -> None:
    """Write atomically; an existing file is replaced only when this command wrote it."""
    check_params_target(path)
    with atomic_write(path, mode="w") as handle:
        handle.write(text)
