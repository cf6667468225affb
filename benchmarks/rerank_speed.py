#!/usr/bin/env python3
# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Re-ranking speed: batched DHE vs the per-pair loop vs OpenCV RANSAC / USAC_MAGSAC.

For K candidates of one query, every method gets the same feature grids (synthetic grids
that see the query through random homographies, so the mutual-NN matches look like real
ones) and does the whole re-ranking: mutual NN, homography, inlier count. Also measures the
device's dense matmul throughput and how much of it the batched paper regressor achieves.

    python benchmarks/rerank_speed.py                 # CPU
    python benchmarks/rerank_speed.py --device cuda   # GPU; the paper preset runs in bf16

Prints a table, then the summary lines ``paper_dhe_ms_K32=`` ... ``matmul_efficiency_K32=``.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from dhe_vpr_ros.method.models import build_model
from dhe_vpr_ros.method.rerank import make_reranker
from dhe_vpr_ros.training.synthetic import random_homographies, warped_feature_grids


def elapsed_ms(fn, device: torch.device) -> float:
    """Wall time of one call in ms, waiting for queued GPU work on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median wall time in ms after one warm-up call."""
    fn()
    return statistics.median(elapsed_ms(fn, device) for _ in range(repeats))


def matmul_gflops(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
    """Peak dense matmul throughput: the best run over a few square sizes."""
    best = 0.0
    for n in (1024, 2048, 4096):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        (a @ b).sum().item()
        fastest_ms = min(elapsed_ms(lambda: a @ b, device) for _ in range(repeats))
        best = max(best, 2 * n ** 3 / (fastest_ms / 1e3) / 1e9)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ks", default="8,32,100")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell (median)")
    parser.add_argument("--paper-loop-max-k", type=int, default=100,
                        help="skip the slow per-pair loop of the paper preset above this K")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    ks = [int(k) for k in args.ks.split(",")]
    low_precision = torch.bfloat16 if device.type == "cuda" else torch.float32

    presets = {
        "paper": (build_model("cct14", "paper", pretrained=False), 384, low_precision),
        "light": (build_model("efficientnet_lite0", "light", pretrained=False), 112, torch.float32),
    }
    rows, results = [], {}
    gen = torch.Generator().manual_seed(0)
    for k in ks:
        hs = random_homographies(k, 384, max_shift=0.12, generator=gen)
        grids = {}
        for name, (_, dim, _) in presets.items():
            q, c = warped_feature_grids(hs, 24, 16, dim=dim, generator=gen)
            grids[name] = (q.to(device), c.to(device))
        sims = torch.linspace(1, 0, k, device=device)
        for name, (model, dim, dtype) in presets.items():
            model = model.to(device).eval()
            q, c = grids[name]
            reranker = make_reranker("dhe", model=model)
            chunk = reranker.chunk_for(device)
            mode = "batched, all K" if chunk is None else f"batched, chunks of {chunk}"

            def batched():
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    return reranker(q, c, sims)

            def loop():  # the authors' style: one pair at a time
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    return [reranker(q, c[i:i + 1], sims[i:i + 1]).scores.item() for i in range(k)]

            repeats = 1 if (name == "paper" and device.type == "cpu") else args.repeats
            ms = timed(batched, device, repeats)
            results[(name, "batched", k)] = ms
            rows.append((f"dhe-{name}", mode, k, ms, f"{dtype}".replace("torch.", "")))
            if name == "light" or k <= args.paper_loop_max_k:
                ms_loop = timed(loop, device, repeats)
                results[(name, "loop", k)] = ms_loop
                rows.append((f"dhe-{name}", "per-pair loop", k, ms_loop, f"{dtype}".replace("torch.", "")))
        q, c = grids["paper"]
        for method in ("ransac", "magsac"):
            reranker = make_reranker(method)
            ms = timed(lambda: reranker(q.float(), c.float(), sims), device, args.repeats)
            results[(method, "opencv", k)] = ms
            rows.append((method, "opencv, same matches", k, ms, "float32"))

    peak = matmul_gflops(device, low_precision)
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"dense matmul throughput ({str(low_precision).replace('torch.', '')}): {peak:.1f} GFLOP/s")
    print(f"{'method':<14}{'mode':<24}{'K':>5}{'ms':>12}{'ms/pair':>10}  dtype")
    for method, mode, k, ms, dtype in rows:
        print(f"{method:<14}{mode:<24}{k:>5}{ms:>12.1f}{ms / k:>10.2f}  {dtype}")

    def get(key):
        return results.get(key, float("nan"))

    paper_cfg = presets["paper"][0].regressor.config
    achieved = paper_cfg.gflop_per_pair() * 32 / (get(("paper", "batched", 32)) / 1e3)
    print(f"paper_dhe_ms_K32={get(('paper', 'batched', 32)):.1f}")
    print(f"light_dhe_ms_K32={get(('light', 'batched', 32)):.1f}")
    print(f"ransac_ms_K32={get(('ransac', 'opencv', 32)):.1f}")
    print(f"magsac_ms_K32={get(('magsac', 'opencv', 32)):.1f}")
    print(f"batched_vs_loop_K32={get(('paper', 'loop', 32)) / get(('paper', 'batched', 32)):.2f}")
    print(f"matmul_efficiency_K32={achieved / peak:.2f}")


if __name__ == "__main__":
    main()
