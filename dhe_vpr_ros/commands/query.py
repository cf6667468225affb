# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""``query``: rank map places for query images (a table, or strict JSON)."""
from __future__ import annotations

import argparse
import json
import sys

from .arguments import add_model_arguments, add_ranking_arguments, count

__all__ = ["add_query", "run_query"]


# -- query ----------------------------------------------------------------------------------
def add_query(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="query image file(s)")
    parser.add_argument("--map", required=True, help="map directory (from build-map)")
    add_ranking_arguments(parser)
    parser.add_argument("--show", type=count(0), default=5, help="rows printed per image (table mode)")
    parser.add_argument("--json", action="store_true", help="print one JSON list per image instead "
                        "(numbers that are not finite are null)")
    add_model_arguments(parser)


def run_query(args: argparse.Namespace) -> int:
    from ..image_conversion import read_image
    from ..runtime import open_localizer
    localizer = open_localizer(args.checkpoint, args.backbone, args.device, args.map, threads=args.threads,
                               runtime=args.runtime, onnx=args.onnx, precision=args.precision, reranker=args.reranker,
                               top_k=args.top_k, refine_rounds=args.refine_rounds,
                               regressor_candidates=args.regressor_candidates)
    for path in args.images:
        result = localizer.query(read_image(path))
        if args.json:
            sys.stdout.write(json.dumps([c.to_json() for c in result.candidates], allow_nan=False) + "\n")
            continue
        sys.stdout.write(f"{path}  ({', '.join(f'{k} {v:.1f} ms' for k, v in result.timings_ms.items())})\n")
        sys.stdout.write(f"  {'rank':>4} {'place':>7} {'score':>8} {'global':>7}  source\n")
        for rank, cand in enumerate(result.candidates[:args.show], 1):
            sys.stdout.write(f"  {rank:>4} {cand.place_id:>7} {cand.score:>8.3f} "
                             f"{cand.global_similarity:>7.3f}  {cand.place.source}\n")
    return 0
