# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""``evaluate``: Recall@N and precision of each re-ranker on a labelled run, with latency.

A query counts as found at N when one of its first N ranked places is a true one (within the
positive distance of a geo split, or within the frame tolerance of a reference / query folder
pair); queries with no true place in the map count as misses (and are reported). Each query is
embedded alone, as a robot would, and retrieved once; every re-ranker then orders the same
candidates.

Precision (``precision.py``) is measured on each query's first-ranked place and its score:
the curve over the score threshold, recall at 100 % precision, average precision, and how
many wrong first places reach ``--min-score``. With ``--sequence`` the queries are fed in
order to the node's sequence verification (``recognizer.LoopPolicy``, same settings and
defaults as the node) and the same figures are reported for the places it verifies: what the
node would publish as loop closures.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .arguments import count, number
from .atomic import atomic_write
from .build_map import add_frames, add_model_arguments, add_ranking_arguments
from .groundtruth import GroundTruthError, LabelledRun, folder_pair, geo_run
from .localizer import Localizer, clock
from .precision import precision_curve, summarize
from .recognizer import LOOP_CLOSURE_PARAMETERS, SEQUENCE_PARAMETERS, LoopPolicy
from .rerank import RERANKERS
from .runtime import open_localizer
from .sequence import SequenceVerifier

__all__ = ["FAR_FRAMES", "Answers", "Ranked", "RecordedRun", "evaluate", "first_answers", "record", "recalls",
           "report_of", "sequence_answers"]

log = logging.getLogger(__name__)

RECALL_VALUES = (1, 5, 10, 20)
FAR_FRAMES = 5  # a wrong answer further than this from the truth bends a SLAM map the most


@dataclass
class Ranked:
    """One query under one re-ranker: ``ids`` best first (the re-ranked candidates, then the
    rest of the retrieval), and ``scores`` of the re-ranked candidates."""

    ids: np.ndarray
    scores: np.ndarray

    @property
    def candidates(self) -> tuple[np.ndarray, np.ndarray]:
        return self.ids[:len(self.scores)], self.scores


@dataclass
class RecordedRun:
    """Every query's ranking under every re-ranker, in query order, and the mean timings (ms)."""

    rankings: dict[str, list[Ranked]]
    latency_ms: dict


def record(localizer: Localizer, queries, rerankers=RERANKERS, top_k: int = 32, depth: int = 20) -> RecordedRun:
    """Embed, retrieve and re-rank every query in order (the node's work for each frame)."""
    rankings = {name: [] for name in rerankers}
    times = {"embed": [], "retrieve": [], **{f"rerank.{name}": [] for name in rerankers}}
    for frame in tqdm(queries, desc="queries", unit="img", disable=None):
        image = frame.load()
        start = clock(localizer.device)
        local, global_ = localizer.embed([image])
        times["embed"].append(clock(localizer.device) - start)
        start = clock(localizer.device)
        sims, ids = localizer.retrieve(global_[0], max(top_k, depth))
        times["retrieve"].append(clock(localizer.device) - start)
        size = (image.shape[1], image.shape[0])
        for name in rerankers:
            result = localizer.rank(local[0], global_[0], size, name, top_k, retrieved=(sims, ids))
            times[f"rerank.{name}"].append(result.timings_ms["rerank"] / 1e3)
            head = np.array([c.place_id for c in result.candidates], dtype=np.int64)
            rest = ids[~np.isin(ids, head)]
            rankings[name].append(Ranked(np.concatenate([head, rest]),
                                         np.array([c.score for c in result.candidates], dtype=np.float64)))
    mean_ms = {key: 1e3 * statistics.fmean(vals) if vals else 0.0 for key, vals in times.items()}
    latency = {"embed": mean_ms["embed"], "retrieve": mean_ms["retrieve"],
               "rerank": {name: mean_ms[f"rerank.{name}"] for name in rerankers if name != "none"}}
    return RecordedRun(rankings, latency)


def recalls(rankings: list[np.ndarray], positives: list[np.ndarray], values=RECALL_VALUES) -> dict[int, float]:
    """Recall@N in percent: share of queries with a positive among their first N places."""
    hits = dict.fromkeys(values, 0)
    for ranked, pos in zip(rankings, positives):
        found = np.flatnonzero(np.isin(ranked, pos))
        first = found[0] if found.size else None
        for n in values:
            hits[n] += int(first is not None and first < n)
    return {n: 100.0 * hits[n] / max(len(rankings), 1) for n in values}


@dataclass
class Answers:
    """One place and score per query (score -inf: no answer), judged against the truth."""

    places: np.ndarray
    scores: np.ndarray
    correct: np.ndarray
    has_positive: np.ndarray
    errors: np.ndarray | None  # frames between answer and truth (frame-indexed runs), else None

    def summary(self, min_score: float) -> dict:
        figures = summarize(precision_curve(self.scores, self.correct, self.has_positive), min_score).to_json()
        if self.errors is not None:
            accepted = np.isfinite(self.scores) & (self.scores >= min_score)
            figures["far_above_min_score"] = int((accepted & (self.errors > FAR_FRAMES)).sum())
        return figures


def judge(run: LabelledRun, places: np.ndarray, scores: np.ndarray) -> Answers:
    has = np.array([p.size > 0 for p in run.positives])
    correct = np.array([bool(np.isin(place, pos)) for place, pos in zip(places, run.positives)]) & has
    errors = np.abs(places - np.arange(len(places))) if run.frame_indexed else None
    return Answers(places, scores, correct, has, errors)


def first_answers(run: LabelledRun, ranked: list[Ranked]) -> Answers:
    """Each query's first-ranked place and its score (single-frame, no verification)."""
    places = np.array([r.ids[0] if r.scores.size else -1 for r in ranked], dtype=np.int64)
    scores = np.array([r.scores[0] if r.scores.size and math.isfinite(r.scores[0]) else -math.inf
                       for r in ranked])
    return judge(run, places, scores)


def sequence_answers(run: LabelledRun, ranked: list[Ranked], policy: LoopPolicy, reranker: str) -> Answers:
    """The queries in order through the node's sequence verification: each query's verified
    place and sequence score, or no answer where the frames disagree or the place is aliased
    (the score threshold is applied by the caller, as a curve)."""
    settings = policy.sequence()
    verifier = SequenceVerifier(settings)
    places, scores = [], []
    for r in ranked:
        verdict = verifier.observe(*r.candidates)
        places.append(verdict.place_id)
        scores.append(verdict.score if verdict.passes(settings, -math.inf) else -math.inf)
    return judge(run, np.array(places, dtype=np.int64), np.array(scores))


def evaluate(localizer: Localizer, run: LabelledRun, rerankers=RERANKERS, top_k: int = 32,
             values=RECALL_VALUES, policy: LoopPolicy | None = None, sequence: bool = False) -> dict:
    """Run every query through retrieval and each re-ranker; returns the report dict."""
    run.label_with_map(localizer.database.places)
    recorded = record(localizer, run.queries, rerankers, top_k, max(values))
    return report_of(run, recorded, top_k, len(localizer.database), values, policy or LoopPolicy(), sequence)


def report_of(run: LabelledRun, recorded: RecordedRun, top_k: int, num_places: int, values=RECALL_VALUES,
              policy: LoopPolicy = LoopPolicy(), sequence: bool = False) -> dict:
    """The report (JSON-ready) of a recorded run: recall, precision, latency, and sequence figures."""
    rerankers = list(recorded.rankings)
    without = sum(1 for p in run.positives if p.size == 0)
    if without:
        log.warning("%d of %d queries have no true place in the map (counted as misses)", without, len(run.queries))
    report = {
        "recall": {name: {str(n): r for n, r in recalls([x.ids for x in recorded.rankings[name]], run.positives,
                                                        values).items()} for name in rerankers},
        "precision": {name: first_answers(run, recorded.rankings[name]).summary(policy.threshold(name))
                      for name in rerankers},
        "latency_ms": recorded.latency_ms,
        "num_queries": len(run.queries), "num_places": num_places, "queries_without_positive": without,
        "top_k": top_k, "ground_truth": run.description,
    }
    if sequence:
        report["sequence"] = {
            "settings": {name: getattr(policy, name) for name in SEQUENCE_PARAMETERS},
            "precision": {name: sequence_answers(run, recorded.rankings[name], policy, name).summary(
                policy.threshold(name)) for name in rerankers}}
    return report


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
    return "\n".join(lines) + "\n"


def _precision_columns(figures: dict) -> str:
    threshold = figures["threshold_at_100_precision"]
    return (f"{figures['recall_at_100_precision']:>8.3f}{figures['average_precision']:>7.3f}"
            f"{'-' if threshold is None else f'{threshold:.3g}':>10}{figures['min_score']:>10.3g}"
            f"{figures['wrong_above_min_score']:>8d}")


def plot_curves(recorded: RecordedRun, run: LabelledRun, path: str, policy: LoopPolicy, sequence: bool) -> None:
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
            kinds.append((" + sequence", sequence_answers(run, ranked, policy, name), "--"))
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
    with atomic_write(Path(path)) as handle:
        fig.savefig(handle, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the labelled run comes from (evaluate and calibrate take the same)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="geo-localisation split: DIR/database/ and DIR/queries/")
    source.add_argument("--reference", help="a reference run's images, one per map place, in file-name order "
                                            "(with --queries: the same route again)")
    parser.add_argument("--queries", help="with --reference: the query run's images, frame i at reference frame i")
    parser.add_argument("--tolerance", type=count(0, 10000), default=2,
                        help="with --reference: frames either side that count as right (default 2)")
    parser.add_argument("--positive-dist-threshold", type=number(0.0, above=True), default=25.0,
                        help="with --dataset: metres")
    parser.add_argument("--map", help="a map built beforehand from the reference frames (default: build one in "
                                      "memory)")


def labelled_run(args: argparse.Namespace) -> LabelledRun:
    if args.dataset:
        return geo_run(args.dataset, args.positive_dist_threshold)
    if not args.queries:
        raise GroundTruthError("--reference needs --queries (the query run of the same route)")
    return folder_pair(args.reference, args.queries, args.tolerance)


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """The node's loop-closure settings, same names, defaults and meaning (``node_params``)."""
    from .node_params import PARAMETERS
    for name in LOOP_CLOSURE_PARAMETERS:
        spec = PARAMETERS[name]
        low, high = spec.bounds
        kind = count(low, high) if isinstance(spec.default, int) else number(low, high)
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=spec.default,
                            help=f"{spec.description} (the node's {name}; default {spec.default:g})")


def policy_from_args(args: argparse.Namespace) -> LoopPolicy:
    return LoopPolicy.from_mapping({f.name: getattr(args, f.name) for f in fields(LoopPolicy)
                                    if hasattr(args, f.name)})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    add_ranking_arguments(parser, multiple=True)
    parser.add_argument("--recall-values", default="1,5,10,20")
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
                               runtime=args.runtime, onnx=args.onnx, reranker=rerankers[0],
                               top_k=args.top_k, refine_rounds=args.refine_rounds)
    if not args.map:
        add_frames(localizer, run.references, args.batch_size, len(run.references), desc="reference")
    return localizer, run


def run(args: argparse.Namespace) -> int:
    rerankers = [r.strip() for r in args.rerankers.split(",") if r.strip()]
    unknown = [r for r in rerankers if r not in RERANKERS]
    if unknown or not rerankers:
        raise ValueError(f"unknown re-ranker(s) {unknown}; choose from {', '.join(RERANKERS)}")
    values = tuple(int(v) for v in args.recall_values.split(","))
    policy = policy_from_args(args)
    localizer, labelled = open_run(args, rerankers)
    labelled.label_with_map(localizer.database.places)
    recorded = record(localizer, labelled.queries, rerankers, args.top_k, max(values))
    report = report_of(labelled, recorded, args.top_k, len(localizer.database), values, policy, args.sequence)
    sys.stdout.write(format_table(report))
    if args.plot:
        plot_curves(recorded, labelled, args.plot, policy, args.sequence)
    if args.json:
        with atomic_write(Path(args.json), mode="w") as handle:
            json.dump(report, handle, indent=2, allow_nan=False)
    return 0
