#!/usr/bin/env python3
# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Which FAISS index a map of a city should use: recall@K against exact search, query time, memory
and build time of the candidates, on the same synthetic route descriptors ``map_scale.py`` uses.

Candidates: ``ivf`` (what ``build-map --index ivf`` writes: inverted lists, exact distances within
the 64 lists searched), ``ivfpq`` (the same lists, descriptors quantised to 64 bytes, re-scored
exactly on the best 4K: memory of a quantised index, accuracy of exact distances), ``ivfpq-raw``
(no re-scoring) and ``hnsw`` (32 links, efSearch 128). FAISS alone: no grids, no map files.

    python benchmarks/index_choice.py --size 1000000

Ends with ``name=value`` lines.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from map_scale import descriptors  # noqa: E402


def make(kind: str, dim: int, size: int):
    """(index, index to search): the index and, for re-scored quantisation, its exact re-scoring wrapper."""
    lists = max(1, min(size // 39, int(4 * math.sqrt(size))))
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 128
        return index, index
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, lists, 64, 8, faiss.METRIC_INNER_PRODUCT)
    index.nprobe = 64
    index.own_fields = True
    quantizer.this.disown()
    if kind == "ivfpq":
        refine = faiss.IndexRefineFlat(index)
        refine.k_factor = 4.0
        return index, refine
    return index, index


def top(scores: np.ndarray, k: int) -> np.ndarray:
    best = np.argpartition(-scores, k)[:k]
    return best[np.argsort(-scores[best])]


def measure(kind: str, vectors: np.ndarray, queries: np.ndarray, exact: np.ndarray, k: int) -> dict:
    dim = vectors.shape[1]
    index, searched = make(kind, dim, len(vectors))
    start = time.perf_counter()
    if not searched.is_trained:
        sample = vectors[np.random.default_rng(0).choice(len(vectors), min(len(vectors), 256 * 4000), replace=False)]
        searched.train(sample)
    searched.add(vectors)
    build = time.perf_counter() - start
    faiss.omp_set_num_threads(1)  # queries as the node runs FAISS; building used every core
    times = []
    for q in queries:
        t = time.perf_counter()
        searched.search(q[None], k)
        times.append((time.perf_counter() - t) * 1e3)
    found = searched.search(queries, k)[1]
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found.tolist(), exact.tolist())]))
    memory = faiss.serialize_index(searched).nbytes / 2**20
    return {"build_s": build, "query_ms": statistics.median(times), "recall": recall, "memory_mib": memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=320, help="the light backbone's global descriptor")
    parser.add_argument("--kinds", default="ivf,ivfpq,ivfpq-raw,hnsw")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=32)
    args = parser.parse_args()
    cores = faiss.omp_get_max_threads()
    rng = np.random.default_rng(0)
    vectors = descriptors(args.size, args.dim, "route", rng)
    picks = rng.choice(args.size, args.queries, replace=False)
    queries = vectors[picks] + rng.standard_normal((args.queries, args.dim)).astype(np.float32) * 0.02
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = np.stack([top(vectors @ q, args.top_k) for q in queries])
    print(f"{args.size} route descriptors of {args.dim}, {args.queries} queries near known places, K={args.top_k}")
    print(f"{'index':<11}{'build s':>9}{'query ms':>10}{'recall@K':>10}{'memory MiB':>12}")
    lines = []
    for kind in args.kinds.split(","):
        faiss.omp_set_num_threads(cores)
        r = measure(kind, vectors, queries, exact, args.top_k)
        print(f"{kind:<11}{r['build_s']:>9.1f}{r['query_ms']:>10.2f}{r['recall']:>10.3f}{r['memory_mib']:>12.0f}")
        lines += [f"{kind.replace('-', '_')}_{key}={value:.3f}" for key, value in r.items()]
    print(" ".join(lines))


if __name__ == "__main__":
    main()
