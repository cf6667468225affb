# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""``evaluate``: Recall@N on a geo-localisation split, re-rankers side by side, with latency.

A query counts as found at N when one of its first N ranked places lies within the positive
distance (UTM metres) of it; queries with no positive in the map count as misses (and are
reported). Each query is embedded alone, as a robot would, and retrieved once; every
re-ranker then orders the same candidates.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .atomic import atomic_write
from .build_map import add_frames, add_model_arguments, add_ranking_arguments
from .datasets import folder_frames, geo_split
from .localizer import Localizer, clock
from .mapdb import MapError
from .rerank import RERANKERS
from .runtime import open_localizer

log = logging.getLogger(__name__)

RECALL_VALUES = (1, 5, 10, 20)


def positives_within(query_utm: np.ndarray, map_utm: np.ndarray, threshold_m: float) -> list[np.ndarray]:
    """For each query, the ids of map places within ``threshold_m`` metres."""
    dist = np.linalg.norm(query_utm[:, None, :] - map_utm[None, :, :], axis=-1)
    return [np.flatnonzero(row <= threshold_m) for row in dist]


def recalls(rankings: list[np.ndarray], positives: list[np.ndarray], values=RECALL_VALUES) -> dict[int, float]:
    """Recall@N in percent: share of queries with a positive among their first N places."""
    hits = dict.fromkeys(values, 0)
    for ranked, pos in zip(rankings, positives):
        found = np.flatnonzero(np.isin(ranked, pos))
        first = found[0] if found.size else None
        for n in values:
            hits[n] += int(first is not None and first < n)
    return {n: 100.0 * hits[n] / max(len(rankings), 1) for n in values}


def evaluate(localizer: Localizer, queries, rerankers=RERANKERS, top_k: int = 32,
             threshold_m: float = 25.0, values=RECALL_VALUES) -> dict:
    """Run every query through retrieval and each re-ranker; returns the report dict."""
    database = localizer.database
    if any(p.utm is None for p in database.places):
        raise MapError("the map has places without UTM coordinates; evaluate needs a map built "
                       "from a geo-localisation split (build-map --geo-split)")
    map_utm = np.array([p.utm for p in database.places], dtype=np.float64)
    query_utm = np.array([q.utm for q in queries], dtype=np.float64)
    positives = positives_within(query_utm, map_utm, threshold_m)
    depth = max(top_k, max(values))
    rankings = {name: [] for name in rerankers}
    times = {"embed": [], "retrieve": [], **{f"rerank.{name}": [] for name in rerankers}}
    for frame in tqdm(queries, desc="queries", unit="img", disable=None):
        image = frame.load()
        start = clock(localizer.device)
        local, global_ = localizer.embed([image])
        times["embed"].append(clock(localizer.device) - start)
        start = clock(localizer.device)
        sims, ids = localizer.retrieve(global_[0], depth)
        times["retrieve"].append(clock(localizer.device) - start)
        size = (image.shape[1], image.shape[0])
        for name in rerankers:
            result = localizer.rank(local[0], global_[0], size, name, top_k, retrieved=(sims, ids))
            times[f"rerank.{name}"].append(result.timings_ms["rerank"] / 1e3)
            head = np.array([c.place_id for c in result.candidates], dtype=np.int64)
            rankings[name].append(np.concatenate([head, ids[len(head):]]))
    without = sum(1 for p in positives if p.size == 0)
    if without:
        log.warning("%d of %d queries have no map place within %.1f m (counted as misses)",
                    without, len(queries), threshold_m)
    mean_ms = {key: 1e3 * statistics.fmean(vals) if vals else 0.0 for key, vals in times.items()}
    return {
        "recall": {name: {str(n): r for n, r in recalls(rankings[name], positives, values).items()}
                   for name in rerankers},
        "latency_ms": {"embed": mean_ms["embed"], "retrieve": mean_ms["retrieve"],
                       "rerank": {name: mean_ms[f"rerank.{name}"] for name in rerankers if name != "none"}},
        "num_queries": len(queries), "num_places": len(database), "queries_without_positive": without,
        "top_k": top_k, "positive_dist_threshold_m": threshold_m,
    }


def format_table(report: dict) -> str:
    values = list(next(iter(report["recall"].values())).keys())
    lines = [f"{report['num_queries']} queries, {report['num_places']} map places, top-K "
             f"{report['top_k']}, positives within {report['positive_dist_threshold_m']:g} m",
             f"{'re-ranker':<10}" + "".join(f"{'R@' + n:>8}" for n in values) + f"{'re-rank ms':>12}"]
    for name, rec in report["recall"].items():
        ms = report["latency_ms"]["rerank"].get(name, 0.0)
        lines.append(f"{name:<10}" + "".join(f"{rec[n]:>8.1f}" for n in values) + f"{ms:>12.1f}")
    lines.append(f"mean latency per query: embed {report['latency_ms']['embed']:.1f} ms, "
                 f"retrieve {report['latency_ms']['retrieve']:.2f} ms")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="geo-localisation split: DIR/database/ and DIR/queries/")
    parser.add_argument("--map", help="a map built beforehand from DIR/database (default: build one in memory)")
    add_ranking_arguments(parser, multiple=True)
    parser.add_argument("--positive-dist-threshold", type=float, default=25.0, help="metres")
    parser.add_argument("--recall-values", default="1,5,10,20")
    parser.add_argument("--json", help="also write the report as JSON to this file")
    parser.add_argument("--batch-size", type=int, default=16)
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    rerankers = [r.strip() for r in args.rerankers.split(",") if r.strip()]
    unknown = [r for r in rerankers if r not in RERANKERS]
    if unknown or not rerankers:
        raise ValueError(f"unknown re-ranker(s) {unknown}; choose from {', '.join(RERANKERS)}")
    values = tuple(int(v) for v in args.recall_values.split(","))
    queries = folder_frames(geo_split(args.dataset, "queries"), with_utm=True)
    database_frames = None if args.map else folder_frames(geo_split(args.dataset, "database"), with_utm=True)
    localizer = open_localizer(args.checkpoint, args.backbone, args.device, args.map, reranker=rerankers[0],
                               top_k=args.top_k, refine_rounds=args.refine_rounds)
    if database_frames is not None:  # no prebuilt map: one in memory
        add_frames(localizer, database_frames, args.batch_size, len(database_frames), desc="database")
    report = evaluate(localizer, queries, rerankers, args.top_k, args.positive_dist_threshold, values)
    sys.stdout.write(format_table(report))
    if args.json:
        with atomic_write(Path(args.json), mode="w") as handle:
            json.dump(report, handle, indent=2)
    return 0
