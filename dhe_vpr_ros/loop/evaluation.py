# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Recall@N and precision of each re-ranker on a labelled run, single-frame and after sequence
verification: what ``evaluate`` and ``calibrate`` report and what the benchmarks measure.

A query counts as found at N when one of its first N ranked places is a true one (within the
positive distance of a geo split, or within the frame tolerance of a reference / query folder
pair); queries with no true place in the map count as misses (and are reported). Each query is
embedded alone, as a robot would, and retrieved once; every re-ranker then orders the same
candidates.

Precision (``precision``) is measured on each query's first-ranked place and its score: the
curve over the score threshold, recall at 100 % precision, average precision, and how many
wrong first places reach the loop-closure threshold. With ``sequence`` the queries are fed in
order to the node's sequence verification (``LoopPolicy``, same settings and defaults as the
node), the places it verifies go through the same two-view check (``verify_min_inliers``), and
the same figures are reported for the places that pass: what the node would publish as loop
closures.
"""
from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from ..map.keypoints import Keypoints, describe
from ..method.localizer import Localizer
from ..method.timing import clock
from ..method.rerank import RERANKERS
from .groundtruth import LabelledRun
from .policy import LOOP_CLOSURE_PARAMETERS, LoopPolicy
from .precision import precision_curve, summarize
from .sequence import SequenceVerifier
from .two_view import PairInliers

__all__ = ["FAR_FRAMES", "RECALL_VALUES", "Answers", "Ranked", "RecordedRun", "evaluate", "first_answers", "judge",
           "record", "recalls", "report_of", "sequence_answers", "two_view_features"]

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
    """Every query's ranking under every re-ranker, in query order, and the mean timings (ms; a
    re-ranker's: ``total`` and its stages, ``Localizer.rank``'s ``stages_ms``, per query).
    ``guided``: the rankings the sequence verification saw, where it added the places its lines
    predicted (``LoopPolicy.sequence_guided``; single-frame figures never use them)."""

    rankings: dict[str, list[Ranked]]
    latency_ms: dict
    guided: dict[str, list[Ranked]] = field(default_factory=dict)
    keypoints: list[Keypoints] = field(default_factory=list)  # each query's, when recorded for the two-view check

    def for_sequence(self, reranker: str) -> list[Ranked]:
        return self.guided.get(reranker, self.rankings[reranker])

    def two_view(self, database) -> PairInliers | None:
        """The two-view inliers of (query, place) pairs against ``database`` (None: no keypoints recorded)."""
        return PairInliers(database, self.keypoints) if self.keypoints else None


def _ranked(result, ids: np.ndarray) -> Ranked:
    head = np.array([c.place_id for c in result.candidates], dtype=np.int64)
    return Ranked(np.concatenate([head, ids[~np.isin(ids, head)]]),
                  np.array([c.score for c in result.candidates], dtype=np.float64))


def record(localizer: Localizer, queries, rerankers=RERANKERS, top_k: int = 32, depth: int = 20,
           guidance: LoopPolicy | None = None, features: int | None = None) -> RecordedRun:
    """Embed, retrieve and re-rank every query in order (the node's work for each frame). With
    ``guidance`` (sequence_guided > 0, a window of 2 frames or more), each re-ranker's frames also
    go through the sequence verification as in the node: the places its strongest lines predict
    are re-ranked with the frame's candidates, and that ranking is recorded in ``guided``.
    ``features``: also detect that many ORB keypoints in each query, for the two-view check."""
    rankings = {name: [] for name in rerankers}
    guide = guidance is not None and guidance.sequence_guided > 0 and guidance.sequence_length > 1
    verifiers = {name: SequenceVerifier(guidance.sequence()) for name in rerankers} if guide else {}
    guided = {name: [] for name in verifiers}
    times = {"embed": [], "retrieve": [], **{f"rerank.{name}": [] for name in rerankers}}
    stages = {name: {} for name in rerankers}  # re-ranker -> stage -> ms summed over the queries
    keypoints = []
    for frame in tqdm(queries, desc="queries", unit="img", disable=None):
        image = frame.load()
        if features:
            keypoints.append(describe(image, features))
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
            for stage, ms in result.stages_ms.items():
                stages[name][stage] = stages[name].get(stage, 0.0) + ms
            rankings[name].append(_ranked(result, ids))
            if name in verifiers:
                ranked = _guided_ranking(localizer, local[0], global_[0], size, name, top_k, ids,
                                         verifiers[name].predict(guidance.sequence_guided), rankings[name][-1])
                verifiers[name].observe(*ranked.candidates)
                guided[name].append(ranked)
    mean_ms = {key: 1e3 * statistics.fmean(vals) if vals else 0.0 for key, vals in times.items()}
    count = max(len(times["embed"]), 1)
    # latency_ms.rerank.<name> is a number, as in every report before stages were timed; the stages have a
    # name of their own (a field that changes meaning gets a new name, never a new type)
    latency = {"embed": mean_ms["embed"], "retrieve": mean_ms["retrieve"],
               "rerank": {name: mean_ms[f"rerank.{name}"] for name in rerankers if name != "none"},
               "rerank_stages": {name: {stage: ms / count for stage, ms in stages[name].items()}
                                 for name in rerankers if name != "none"}}
    return RecordedRun(rankings, latency, guided, keypoints)


def _guided_ranking(localizer, local, global_, size, name, top_k, ids, predicted, plain: Ranked) -> Ranked:
    """The frame's ranking with the predicted places retrieval missed re-ranked too (``plain`` when none)."""
    if not len(np.setdiff1d(np.asarray(predicted, dtype=np.int64), ids[:top_k])):
        return plain
    sims, with_predicted = localizer.retrieve(global_, top_k, include_ids=predicted)
    result = localizer.rank(local, global_, size, name, len(with_predicted), retrieved=(sims, with_predicted))
    return _ranked(result, np.concatenate([with_predicted, ids[~np.isin(ids, with_predicted)]]))


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


def sequence_answers(run: LabelledRun, ranked: list[Ranked], policy: LoopPolicy, reranker: str,
                     inliers=None) -> Answers:
    """The queries in order through the node's sequence verification: each query's verified
    place and sequence score, or no answer where the frames disagree, the place is aliased, or
    the two-view check refuses it (``inliers(query, place)``: its inlier count, None where the map
    has no keypoints and the node would skip the check; without ``inliers`` no check is made). The
    score threshold is applied by the caller, as a curve."""
    settings, check = policy.sequence(), policy.two_view()
    verifier = SequenceVerifier(settings)
    places, scores = [], []
    for q, r in enumerate(ranked):
        verdict = verifier.observe(*r.candidates)
        places.append(verdict.place_id)
        passed = verdict.passes(settings, -math.inf)
        if passed and check.enabled and inliers is not None:
            found = inliers(q, verdict.place_id)
            passed = found is None or check.passes(found)
        scores.append(verdict.score if passed else -math.inf)
    return judge(run, np.array(places, dtype=np.int64), np.array(scores))


def evaluate(localizer: Localizer, run: LabelledRun, rerankers=RERANKERS, top_k: int = 32,
             values=RECALL_VALUES, policy: LoopPolicy | None = None, sequence: bool = False) -> dict:
    """Run every query through retrieval and each re-ranker; returns the report dict."""
    run.label_with_map(localizer.database.places)
    policy = policy or LoopPolicy()
    recorded = record(localizer, run.queries, rerankers, top_k, max(values), policy if sequence else None,
                      two_view_features(policy, sequence))
    return report_of(run, recorded, top_k, len(localizer.database), values, policy, sequence,
                     recorded.two_view(localizer.database))


def two_view_features(policy: LoopPolicy, sequence: bool) -> int | None:
    """The ORB features ``record`` detects in each query: the policy's, where its verification checks."""
    return policy.verify_features if sequence and policy.two_view().enabled else None


def report_of(run: LabelledRun, recorded: RecordedRun, top_k: int, num_places: int, values=RECALL_VALUES,
              policy: LoopPolicy = LoopPolicy(), sequence: bool = False, inliers=None) -> dict:
    """The report (JSON-ready) of a recorded run: recall, precision, latency, and sequence figures
    (``inliers``: the two-view lookup, ``RecordedRun.two_view``)."""
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
            "settings": {name: getattr(policy, name) for name in LOOP_CLOSURE_PARAMETERS if name != "min_score"},
            "precision": {name: sequence_answers(run, recorded.for_sequence(name), policy, name, inliers).summary(
                policy.threshold(name)) for name in rerankers}}
    return report
