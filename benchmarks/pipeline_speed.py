#!/usr/bin/env python3
# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""What the node does for each frame, stage by stage, idle and with busy neighbours.

On a real map (the reference frames of a folder pair; default: the bundled demo photos), every
query frame goes through the node's order: ``convert`` (a sensor_msgs/Image's fields to RGB,
as the node converts), ``embed``, ``retrieve`` (top-K), then each re-ranker on the same
candidates, with the stages ``Localizer.rank`` reports for it (``read`` the candidates' grids,
``mutual_nn``, and DHE's ``shift_start``, ``regressor``, ``refine``, ``inliers`` or RANSAC's and
MAGSAC's ``estimator``: the same stages ``evaluate --json`` and the node's /diagnostics show).
``--busy-cores N`` starts N processes that
keep a core busy (a plain Python loop, as another node would), so the table shows what a shared
robot CPU costs.

    python benchmarks/pipeline_speed.py                     # idle
    python benchmarks/pipeline_speed.py --busy-cores 1      # one busy core beside

The busy neighbours start before the package sets its threads (as on a robot, where the other nodes
run first), and the loop applies the thread governor before each frame, as the node's inference
thread does. To measure an older checkout, run that checkout's own copy of this script with
``PYTHONPATH=old_checkout``. Ends with ``name=value`` lines.
"""
from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def busy() -> None:
    while True:
        pass


def timed(samples: dict, name: str, fn, *args):
    """Run ``fn`` and record its ms (after the GPU's queued work, where there is one)."""
    import torch
    start = time.perf_counter()
    out = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    samples.setdefault(name, []).append((time.perf_counter() - start) * 1e3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, help="map frames (default: the bundled demo database)")
    parser.add_argument("--queries", type=Path, help="query frames (default: the bundled demo queries)")
    parser.add_argument("--frames", type=int, default=40, help="query frames timed (the queries repeat)")
    parser.add_argument("--busy-cores", type=int, default=0)
    parser.add_argument("--top-k", type=int, default=16, help="the node's default")
    parser.add_argument("--rerankers", default="dhe,ransac,magsac")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="apply dhe_vpr_ros.runtime.threads with this many "
                        "(where the package has it; default: its own default)")
    parser.add_argument("--label", default="", help="a prefix for the name=value lines")
    parser.add_argument("--runtime", default="torch", choices=("torch", "onnxruntime"))
    parser.add_argument("--onnx", help="with --runtime onnxruntime: the folder `export` wrote")
    args = parser.parse_args()

    import torch

    from dhe_vpr_ros.map.sources import folder_frames
    from dhe_vpr_ros.commands.demo import DATA
    from dhe_vpr_ros.image_conversion import rgb_to_fields, to_rgb
    from dhe_vpr_ros.method.identity import model_identity
    from dhe_vpr_ros.method.localizer import Localizer
    from dhe_vpr_ros.map.database import MapDatabase
    from dhe_vpr_ros.map.records import Place
    from dhe_vpr_ros.runtime.loading import load_model
    # the neighbours run before the node starts, as on a robot (and the package may look at them)
    procs = [multiprocessing.Process(target=busy, daemon=True) for _ in range(args.busy_cores)]
    for p in procs:
        p.start()
    time.sleep(0.5 if procs else 0.0)
    from dhe_vpr_ros.runtime.threads import ThreadGovernor, configure_threads
    threads = configure_threads(args.threads).describe()
    governor = ThreadGovernor(args.threads)  # what the node's inference thread does before each frame
    torch.set_grad_enabled(False)
    if args.runtime == "onnxruntime":
        from dhe_vpr_ros.runtime.loading import load_any_model
        model, _ = load_any_model(None, None, args.device, None, "onnxruntime", args.onnx)
    else:
        model, _ = load_model(None, device=args.device)
    loc = Localizer(model, MapDatabase(model_identity(model)), args.device, "dhe", top_k=args.top_k)
    refs = folder_frames(args.reference or DATA / "database")
    for start in range(0, len(refs), 16):
        batch = [f.load() for f in refs[start:start + 16]]
        loc.add_images(batch, [Place(-1, f"p{start + i}") for i in range(len(batch))])
    queries = [f.load() for f in folder_frames(args.queries or DATA / "queries")]
    messages = [rgb_to_fields(img, "bgr8") for img in queries]
    rerankers = [r for r in args.rerankers.split(",") if r]
    samples: dict[str, list[float]] = {}
    try:
        for n in range(args.frames + 3):
            if n == 3:  # the first frames warm caches and allocators up
                samples.clear()
            fields = messages[n % len(messages)]
            governor.adjust()

            class Msg:  # what the node receives
                encoding, height, width, step = fields["encoding"], fields["height"], fields["width"], fields["step"]
                is_bigendian, data = fields["is_bigendian"], fields["data"]
            image = timed(samples, "convert", to_rgb, Msg)
            local, global_ = timed(samples, "embed", loc.embed, [image])
            sims, ids = timed(samples, "retrieve", loc.retrieve, global_[0], args.top_k)
            size = (image.shape[1], image.shape[0])
            for name in rerankers:
                result = timed(samples, f"rerank.{name}", loc.rank, local[0], global_[0], size, name, args.top_k,
                               None, (sims, ids))
                for stage, ms in result.stages_ms.items():
                    samples.setdefault(f"{name}.{stage}", []).append(ms)
    finally:
        for p in procs:
            p.terminate()
    print(f"{len(refs)} map places, top-K {args.top_k}, {args.frames} frames, busy cores beside: {args.busy_cores}, "
          f"runtime {args.runtime}, threads: {threads}")
    print(f"{'stage':<16}{'mean ms':>9}{'median':>9}{'p90':>9}")
    lines = []
    prefix = (args.label + "_") if args.label else ""
    for stage, values in samples.items():
        v = np.array(values)
        print(f"{stage:<16}{v.mean():>9.1f}{np.median(v):>9.1f}{np.percentile(v, 90):>9.1f}")
        lines.append(f"{prefix}{stage.replace('.', '_')}_ms={statistics.fmean(values):.1f}")
    frame = sum(statistics.fmean(samples[s]) for s in ("convert", "embed", "retrieve", "rerank.dhe") if s in samples)
    lines.append(f"{prefix}frame_dhe_ms={frame:.1f}")
    print(" ".join(lines))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
