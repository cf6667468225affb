#!/usr/bin/env python3
# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Map database at scale: build time, size on disk, resident memory, per-query latency.

Synthetic maps of 1k / 10k / 100k places (random unit global descriptors, random float16
local grids) with the grid shapes of the light backbone (EfficientNet-Lite0: 112x24x24,
320-d) and of the paper's CCT (384x24x24, 384-d). Each map is built and saved through
``MapDatabase`` exactly as build-map does, then opened in a FRESH process that reports its
resident memory and times queries: FAISS retrieval + reading the K=32 candidates' grids.
"warm" reads hit the page cache; "cold" reads evict the grid file from it before every
query (posix_fadvise DONTNEED), i.e. they measure the disk.

    python benchmarks/map_scale.py                      # all sizes, both grids (needs ~60 GB disk)
    python benchmarks/map_scale.py --sizes 1000,10000   # quicker

Goal at 100k places: query < 50 ms, resident memory < 2 GiB.
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
from dhe_vpr_ros.map.format import LOCAL_GRIDS
from dhe_vpr_ros.method.identity import ModelIdentity

GRIDS = {"light": ((112, 24, 24), 320), "cct": ((384, 24, 24), 384)}


def rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build(path: Path, size: int, grid: str, index: str, seed: int = 0) -> float:
    shape, dim = GRIDS[grid]
    rng = np.random.default_rng(seed)
    db = MapDatabase(ModelIdentity(f"synthetic-{grid}", "0" * 64, 384, shape, dim), index,
                     spill_dir=str(path.parent))
    block = rng.standard_normal((256, *shape)).astype(np.float16)  # grid content does not affect timing
    start = time.perf_counter()
    for first in range(0, size, 256):
        n = min(256, size - first)
        db.add(rng.standard_normal((n, dim)).astype(np.float32), block[:n])
    db.save(path)
    return time.perf_counter() - start


def probe(path: str, queries: int, k: int) -> dict:
    """Run in a fresh process: open, report RSS, time retrieve + read of K grids."""
    db = MapDatabase.open(path)
    rss = rss_mib()
    rng = np.random.default_rng(1)
    fd = os.open(Path(path) / LOCAL_GRIDS, os.O_RDONLY)
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
    return {"rss_mib": rss, "rss_after_queries_mib": rss_mib(), **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--grids", default="light,cct")
    parser.add_argument("--index", default="flat", choices=("flat", "hnsw"))
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument("--workdir", default=None, help="where maps are written (default: a temp dir here)")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe, args.queries, args.top_k)))
        return
    workdir = Path(tempfile.mkdtemp(prefix="map_scale-", dir=args.workdir or "."))
    header = (f"{'grid':<6} {'places':>7} {'index':<5} {'build s':>8} {'size GiB':>9} {'RSS MiB':>8} "
              f"{'warm ms':>8} {'warm p95':>9} {'cold ms':>8} {'cold p95':>9}")
    print(header)
    print("-" * len(header))
    summary = {}
    try:
        for grid in args.grids.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                shape, dim = GRIDS[grid]
                need = size * int(np.prod(shape)) * 2 * 1.05
                free = shutil.disk_usage(workdir).free
                if need > free:
                    print(f"{grid:<6} {size:>7} skipped: needs {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free")
                    continue
                path = workdir / f"{grid}_{size}"
                build_s = build(path, size, grid, args.index)
                size_gib = sum(f.stat().st_size for f in path.iterdir()) / 2**30
                out = subprocess.run([sys.executable, __file__, "--probe", str(path), "--queries",
                                      str(args.queries), "--top-k", str(args.top_k)],
                                     check=True, capture_output=True, text=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                print(f"{grid:<6} {size:>7} {args.index:<5} {build_s:>8.1f} {size_gib:>9.2f} "
                      f"{r['rss_after_queries_mib']:>8.0f} {r['warm']['median']:>8.2f} {r['warm']['p95']:>9.2f} "
                      f"{r['cold']['median']:>8.2f} {r['cold']['p95']:>9.2f}", flush=True)
                summary[f"{grid}_{size}"] = r
                shutil.rmtree(path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for key, r in summary.items():
        print(f"{key}: query_ms_cold={r['cold']['median']:.2f} query_ms_warm={r['warm']['median']:.2f} "
              f"rss_mib={r['rss_after_queries_mib']:.0f}")


if __name__ == "__main__":
    main()
