# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Precision of first-ranked matches: the precision-recall curve over a score threshold.

A loop-closure detector accepts a query's first-ranked place when its score reaches a
threshold. For a SLAM back-end one wrong acceptance does more harm than many misses, so the
figures that matter are VPR-Bench's:

* the precision-recall curve, one point per distinct score (tied scores are accepted or
  rejected together, since no threshold separates them);
* recall at 100 % precision: the share of queries accepted before the first wrong one;
* average precision: ``sum_n (R_n - R_(n-1)) * P_n`` over the curve's points (the step-wise
  area, as scikit-learn's ``average_precision_score``; no interpolation).

Recall counts the queries that have a true place in the map; a query without one can only
be a wrong acceptance. A query with no score (nothing retrieved, or not verified) is never
accepted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["PrecisionCurve", "PrecisionSummary", "precision_curve", "summarize"]


@dataclass(frozen=True)
class PrecisionCurve:
    """``thresholds`` (descending distinct scores) and, for ``score >= threshold``, the
    ``precision`` and ``recall`` of the accepted first places; ``positives``: queries that
    have a true place; ``scores``/``correct``: the inputs, per query."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    positives: int
    scores: np.ndarray
    correct: np.ndarray


@dataclass(frozen=True)
class PrecisionSummary:
    """The report's figures (``report["precision"][reranker]``); ``threshold_at_100_precision``
    is the lowest score accepted at 100 % precision (None: the highest-scoring answer is wrong)."""

    recall_at_100_precision: float
    average_precision: float
    threshold_at_100_precision: float | None
    wrong_above_min_score: int
    min_score: float
    queries: int
    positives: int

    def to_json(self) -> dict:
        return dict(self.__dict__)


def precision_curve(scores, correct, has_positive) -> PrecisionCurve:
    """The curve for per-query ``scores`` of the first-ranked place (NaN or -inf: never
    accepted), ``correct`` (the first place is a true one) and ``has_positive`` (the map
    holds a true place for the query). All three are (Q,) arrays."""
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    has_positive = np.asarray(has_positive, dtype=bool)
    if not scores.shape == correct.shape == has_positive.shape or scores.ndim != 1:
        raise ValueError(f"scores, correct and has_positive must be (Q,) arrays of one length, not "
                         f"{scores.shape}, {correct.shape}, {has_positive.shape}")
    if (correct & ~has_positive).any():
        raise ValueError("a query without a true place in the map cannot have a correct first place")
    usable = np.isfinite(scores)
    order = np.argsort(-scores[usable], kind="stable")
    ranked, hits = scores[usable][order], correct[usable][order]
    tp, fp = np.cumsum(hits), np.cumsum(~hits)
    last_of_tie = np.r_[ranked[1:] != ranked[:-1], True] if ranked.size else np.zeros(0, bool)
    tp, fp, thresholds = tp[last_of_tie], fp[last_of_tie], ranked[last_of_tie]
    positives = int(has_positive.sum())
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / positives if positives else np.zeros_like(tp, dtype=np.float64)
    return PrecisionCurve(thresholds, precision, recall.astype(np.float64), positives, scores, correct)


def summarize(curve: PrecisionCurve, min_score: float = -math.inf) -> PrecisionSummary:
    """Recall at 100 % precision, average precision, and how many wrong first places score
    ``min_score`` or more (what a node with that threshold would publish as loop closures)."""
    perfect = np.flatnonzero(curve.precision >= 1.0)
    # precision stays below 1 after the first wrong acceptance, so the perfect points are a prefix
    prefix = perfect[perfect == np.arange(perfect.size)]
    recall_100 = float(curve.recall[prefix[-1]]) if prefix.size else 0.0
    threshold = float(curve.thresholds[prefix[-1]]) if prefix.size else None
    steps = np.diff(np.r_[0.0, curve.recall])
    average_precision = float((steps * curve.precision).sum())
    accepted = np.isfinite(curve.scores) & (curve.scores >= min_score)
    wrong = int((accepted & ~curve.correct).sum())
    return PrecisionSummary(recall_100, average_precision, threshold, wrong, float(min_score),
                            int(curve.scores.size), curve.positives)
