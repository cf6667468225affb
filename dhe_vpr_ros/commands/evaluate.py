# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""``evaluate``: Recall@N and precision of each re-ranker on a labelled run, with latency
(``loop.evaluation`` computes; this command parses, prints a table, writes JSON and a plot)."""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

from ..atomic import atomic_write, check_output
from ..reading import InputError, read_bytes
from ..loop.evaluation import RecordedRun, first_answers, record, report_of, sequence_answers, two_view_features
from ..loop.groundtruth import LabelledRun
from ..loop.policy import LoopPolicy
from ..loop.precision import precision_curve, summarize
from ..map.building import add_frames
from ..method.localizer import Localizer
from ..method.rerank import RERANKERS
from ..runtime import open_localizer
from .arguments import (add_model_arguments, add_policy_arguments, add_ranking_arguments, add_run_arguments, count,
                        counts, labelled_run, policy_from_args)

__all__ = ["REPORT_FORMAT", "REPORT_SCHEMA_VERSION", "add_arguments", "format_table", "open_run", "run",
           "written_by_evaluate"]

REPORT_FORMAT = "dhe_vpr_ros.evaluate"  # the mark of a report (and, as the PNG's Software, of a plot) of ours
# 2: latency_ms.rerank.<name> is a number again (the total) and the stages are latency_ms.rerank_stages.<name>;
# reports without schema_version are 1, where latency_ms.rerank.<name> was the table. A field that changes
# meaning gets a new name, and this number goes up.
REPORT_SCHEMA_VERSION = 2


def written_by_evaluate(path: Path) -> bool:
    """Whether the file at ``path`` is a report or plot this command wrote (only those are replaced)."""
    try:
        data = read_bytes(path, "file", 1 << 26)
    except (OSError, InputError):
        return False
    if data.startswith(b"\x89PNG"):
        return REPORT_FORMAT.encode() in data[:1 << 16]
    try:
        report = json.loads(data)
    except ValueError:
        return False
    return isinstance(report, dict) and report.get("format") == REPORT_FORMAT


def format_table(report: dict) -> str:
    values = list(next(iter(report["recall"].values())).keys())
    lines = [f"{report['num_queries']} queries, {report['num_places']} map places, top-K {report['top_k']}, "
             f"{report['ground_truth']}",
             f"{'re-ranker':<10}" + "".join(f"{'R@' + n:>8}" for n in values)
             + f"{'R@100P':>8}{'AP':>7}{'thr@100P':>10}{'min_score':>10}{'wrong>=':>8}{'re-rank ms':>12}"]
    for name, rec in report["recall"].items():
        ms = report["latency_ms"]["rerank"].get(name, 0.0)
        lines.append(f"{name:<10}" + "".join(f"{rec[n]:>8.1f}" for n in values)
                     + _precision_columns(report["precision"][name]) + f"{ms:>12.1f}")
    if "sequence" in report:
        settings = ", ".join(f"{k} {v:g}" for k, v in report["sequence"]["settings"].items())
        lines.append(f"after sequence verification ({settings}):")
        for name, figures in report["sequence"]["precision"].items():
            lines.append(f"{name:<10}" + " " * 8 * len(values) + _precision_columns(figures)
                         + (f"  far: {figures['far_above_min_score']}" if "far_above_min_score" in figures else ""))
    lines.append(f"mean latency per query: embed {report['latency_ms']['embed']:.1f} ms, "
                 f"retrieve {report['latency_ms']['retrieve']:.2f} ms")
    for name, total in report["latency_ms"]["rerank"].items():
        parts = report["latency_ms"]["rerank_stages"][name]
        lines.append(f"  {name} re-ranking {total:.1f} ms: "
                     + ", ".join(f"{stage} {ms:.1f}" for stage, ms in parts.items()))
    return "\n".join(lines) + "\n"


def _precision_columns(figures: dict) -> str:
    threshold = figures["threshold_at_100_precision"]
    return (f"{figures['recall_at_100_precision']:>8.3f}{figures['average_precision']:>7.3f}"
            f"{'-' if threshold is None else f'{threshold:.3g}':>10}{figures['min_score']:>10.3g}"
            f"{figures['wrong_above_min_score']:>8d}")


def plot_curves(recorded: RecordedRun, run: LabelledRun, path: str, policy: LoopPolicy, sequence: bool,
                inliers=None) -> None:
    """Precision-recall curves of every re-ranker on one figure (dashed: after sequence verification)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib (pip install matplotlib)") from None
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, ranked in recorded.rankings.items():
        kinds = [("", first_answers(run, ranked), "-")]
        if sequence:
            kinds.append((" + sequence", sequence_answers(run, recorded.for_sequence(name), policy, name, inliers),
                          "--"))
        for suffix, answers, style in kinds:
            curve = precision_curve(answers.scores, answers.correct, answers.has_positive)
            ax.plot(np.r_[0.0, curve.recall], np.r_[1.0, curve.precision], style,
                    label=f"{name}{suffix} (R@100P {summarize(curve).recall_at_100_precision:.2f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"{len(run.queries)} queries: {run.description}", fontsize=9)
    ax.legend(loc="lower left", fontsize=8)
    picture = io.BytesIO()  # drawn first, then one write through the door
    fig.savefig(picture, format="png", dpi=120, bbox_inches="tight", metadata={"Software": REPORT_FORMAT})
    with atomic_write(Path(path), owned=written_by_evaluate) as handle:
        handle.write(picture.getbuffer())
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    add_ranking_arguments(parser, multiple=True)
    parser.add_argument("--recall-values", type=counts(1, 1000), default=(1, 5, 10, 20),
                        help="N of the Recall@N reported, comma-separated, increasing (default 1,5,10,20)")
    parser.add_argument("--sequence", action="store_true", help="also report precision after the node's sequence "
                                                                "verification (queries in file-name order)")
    add_policy_arguments(parser)
    parser.add_argument("--json", help="also write the report as JSON to this file")
    parser.add_argument("--plot", help="draw the precision-recall curves of all re-rankers to this PNG file")
    parser.add_argument("--batch-size", type=count(1, 4096), default=16)
    add_model_arguments(parser)


def open_run(args: argparse.Namespace, rerankers: list[str]) -> tuple[Localizer, LabelledRun]:
    """The labelled run and a localizer whose map holds its reference frames (prebuilt or embedded now)."""
    run = labelled_run(args)
    localizer = open_localizer(args.checkpoint, args.backbone, args.device, args.map, threads=args.threads,
                               runtime=args.runtime, onnx=args.onnx, precision=args.precision, reranker=rerankers[0],
                               top_k=args.top_k, refine_rounds=args.refine_rounds,
                               regressor_candidates=args.regressor_candidates)
    if not args.map:
        add_frames(localizer, run.references, args.batch_size, len(run.references), desc="reference")
    return localizer, run


def run(args: argparse.Namespace) -> int:
    rerankers = [r.strip() for r in args.rerankers.split(",") if r.strip()]
    unknown = [r for r in rerankers if r not in RERANKERS]
    if unknown or not rerankers:
        raise ValueError(f"unknown re-ranker(s) {unknown}; choose from {', '.join(RERANKERS)}")
    values = args.recall_values
    policy = policy_from_args(args)
    for output in (args.json, args.plot):  # before the work, not after it
        if output:
            check_output(output, written_by_evaluate)
    localizer, labelled = open_run(args, rerankers)
    labelled.label_with_map(localizer.database.places)
    recorded = record(localizer, labelled.queries, rerankers, args.top_k, max(values),
                      policy if args.sequence else None, two_view_features(policy, args.sequence))
    inliers = recorded.two_view(localizer.database)
    report = report_of(labelled, recorded, args.top_k, len(localizer.database), values, policy, args.sequence, inliers)
    sys.stdout.write(format_table(report))
    sys.stdout.flush()
    if args.json:  # the report first: a plot that fails must not cost it
        with atomic_write(args.json, mode="w", owned=written_by_evaluate) as handle:
            marked = {"format": REPORT_FORMAT, "schema_version": REPORT_SCHEMA_VERSION, **report}
            handle.write(json.dumps(marked, indent=2, allow_nan=False) + "\n")
    if args.plot:
        plot_curves(recorded, labelled, args.plot, policy, args.sequence, inliers)
    return 0
