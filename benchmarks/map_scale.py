#!/usr/bin/env python3
# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Map database at scale: build time, size on disk, resident memory, per-query latency, and the
retrieval recall of an approximate index against exact search.

Synthetic maps of 1k .. 1M places with the grid shapes of the light backbone (EfficientNet-Lite0:
112x24x24, 320-d) and of the paper's CCT (384x24x24, 384-d), stored float16 or compact
(``--codec pca-int4``). Global descriptors are ``random`` unit vectors, or ``route``: places along
1000-place routes, each a small step from the last, as a robot's map is (what makes an index's
approximations show). Each map is built and saved through ``MapDatabase`` exactly as build-map
does (its grids from one fixed block of random unit cells: their content does not change the
timing), then opened in a FRESH process that reports its resident memory and times queries:
retrieval + reading and decoding the K=32 candidates' grids. "warm" reads hit the page cache;
"cold" reads evict the grid file from it before every query (posix_fadvise DONTNEED), i.e. they
measure the disk. Recall@K: the share of the exact top K (brute force over every descriptor, in
the building process) that the map's own search returns, for queries near known places.

    python benchmarks/map_scale.py                      # 1k-100k, both grids, float16 (needs ~60 GB disk)
    python benchmarks/map_scale.py --sizes 1000000 --grids light --codec pca-int4 --index ivf --descriptors route

Goals: 100k places query < 50 ms, RSS < 2 GiB; 1M places (issue 28) the same, recall@32 >= 0.95.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dhe_vpr_ros.map.database import MapDatabase
from dhe_vpr_ros.map.format import grid_file_name
from dhe_vpr_ros.method.identity import ModelIdentity

GRIDS = {"light": ((112, 24, 24), 320), "cct": ((384, 24, 24), 384)}


def rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def descriptors(size: int, dim: int, kind: str, rng) -> np.ndarray:
    """(size, dim) unit vectors: independent, or along routes of 1000 places (a small step each)."""
    if kind == "random":
        out = rng.standard_normal((size, dim)).astype(np.float32)
    else:
        steps = rng.standard_normal((size, dim)).astype(np.float32) * 0.15
        steps[::1000] = rng.standard_normal((len(steps[::1000]), dim)).astype(np.float32) * 3.0  # a new route
        out = np.empty_like(steps)
        for start in range(0, size, 1000):
            out[start:start + 1000] = np.cumsum(steps[start:start + 1000], axis=0)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def build(path: Path, size: int, grid: str, index: str, codec: str, kind: str, seed: int = 0) -> tuple[float, dict]:
    """Build and save; returns (seconds, the exact top-K answers of the recall queries)."""
    from dhe_vpr_ros.map.codec import GridCodec
    shape, dim = GRIDS[grid]
    rng = np.random.default_rng(seed)
    db = MapDatabase(ModelIdentity(f"synthetic-{grid}", "0" * 64, 384, shape, dim), index,
                     spill_dir=str(path.parent), codec=GridCodec(codec))
    block = rng.standard_normal((1024, *shape)).astype(np.float32)
    block = (block / np.linalg.norm(block, axis=1, keepdims=True)).astype(np.float16)
    vectors = descriptors(size, dim, kind, rng)
    start = time.perf_counter()
    for first in range(0, size, 1024):
        n = min(1024, size - first)
        db.add(vectors[first:first + n], block[:n])
    db.save(path)
    seconds = time.perf_counter() - start
    picks = rng.choice(size, 50, replace=False)
    queries = vectors[picks] + rng.standard_normal((50, dim)).astype(np.float32) * 0.02
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :32]
    return seconds, {"queries": queries.tolist(), "exact": exact.tolist()}


def probe(path: str, queries: int, k: int, truth: dict) -> dict:
    """Run in a fresh process: open, report RSS, time retrieve + read of K grids, and recall@K.
    Threads as the node sets them (the free cores)."""
    from dhe_vpr_ros.runtime.threads import configure_threads
    configure_threads()
    db = MapDatabase.open(path)
    rss = rss_mib()
    rng = np.random.default_rng(1)
    fd = os.open(Path(path) / grid_file_name(db.codec), os.O_RDONLY)
    results = {}
    for mode in ("warm", "cold"):
        times = []
        for _ in range(queries):
            q = rng.standard_normal((1, db.identity.global_dim)).astype(np.float32)
            if mode == "cold":
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            start = time.perf_counter()
            _, ids = db.search(q, k)
            grids = db.local_features(ids[0])
            float(grids[:, 0, 0, 0].astype(np.float32).sum())  # make sure the bytes were read
            times.append((time.perf_counter() - start) * 1e3)
        times.sort()
        results[mode] = {"median": statistics.median(times), "p95": times[int(0.95 * (len(times) - 1))]}
    found = db.search(np.asarray(truth["queries"], np.float32), k)[1]
    exact = np.asarray(truth["exact"])[:, :k]
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found.tolist(), exact.tolist())]))
    return {"rss_mib": rss, "rss_after_queries_mib": rss_mib(), "recall": recall, **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--grids", default="light,cct")
    parser.add_argument("--index", default="flat", choices=("flat", "hnsw", "ivf"))
    parser.add_argument("--codec", default="float16", choices=("float16", "pca-int4"), help="how grids are stored")
    parser.add_argument("--descriptors", default="random", choices=("random", "route"))
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument("--workdir", default=None, help="where maps are written (default: a temp dir here)")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        truth = json.loads((Path(args.probe).parent / "truth.json").read_text())
        print(json.dumps(probe(args.probe, args.queries, args.top_k, truth)))
        return
    workdir = Path(tempfile.mkdtemp(prefix="map_scale-", dir=args.workdir or "."))
    header = (f"{'grid':<6} {'places':>7} {'index':<5} {'codec':<9} {'build s':>8} {'size GiB':>9} {'RSS MiB':>8} "
              f"{'warm ms':>8} {'warm p95':>9} {'cold ms':>8} {'cold p95':>9} {'recall@K':>9}")
    print(header)
    print("-" * len(header))
    summary = {}
    try:
        for grid in args.grids.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                shape, dim = GRIDS[grid]
                from dhe_vpr_ros.map.codec import GridCodec
                need = size * GridCodec(args.codec).row_bytes(shape) * 1.05
                free = shutil.disk_usage(workdir).free
                if need > free:
                    print(f"{grid:<6} {size:>7} skipped: needs {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free")
                    continue
                path = workdir / f"{grid}_{size}"
                build_s, truth = build(path, size, grid, args.index, args.codec, args.descriptors)
                (workdir / "truth.json").write_text(json.dumps(truth))
                size_gib = sum(f.stat().st_size for f in path.iterdir()) / 2**30
                done = subprocess.run([sys.executable, __file__, "--probe", str(path), "--queries",
                                       str(args.queries), "--top-k", str(args.top_k)], capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"the probe failed:\n{done.stderr[-3000:]}")
                out = done.stdout
                r = json.loads(out.strip().splitlines()[-1])
                print(f"{grid:<6} {size:>7} {args.index:<5} {args.codec:<9} {build_s:>8.1f} {size_gib:>9.2f} "
                      f"{r['rss_after_queries_mib']:>8.0f} {r['warm']['median']:>8.2f} {r['warm']['p95']:>9.2f} "
                      f"{r['cold']['median']:>8.2f} {r['cold']['p95']:>9.2f} {r['recall']:>9.3f}", flush=True)
                summary[f"{grid}_{size}"] = r
                shutil.rmtree(path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for key, r in summary.items():
        print(f"{key}_query_ms_cold={r['cold']['median']:.2f} {key}_query_ms_warm={r['warm']['median']:.2f} "
              f"{key}_rss_mib={r['rss_after_queries_mib']:.0f} {key}_recall_at_k={r['recall']:.3f}")


if __name__ == "__main__":
    main()
