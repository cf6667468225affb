# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""One command line: ``python -m dhe_vpr_ros <command>``; each command is also a console
script for ``ros2 run dhe_vpr_ros <name>``. Commands are thin: parse, call the core, report."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Callable

from .arguments import count

log = logging.getLogger("dhe_vpr_ros")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="[%(levelname)s] %(name)s: %(message)s")


# -- convert-checkpoint ---------------------------------------------------------------------
def add_convert_checkpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="checkpoint to read (ours, or the DHE-VPR authors' layout)")
    parser.add_argument("destination", help="where to write a dhe_vpr_ros checkpoint")


def run_convert_checkpoint(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .models import load_checkpoint, save_checkpoint
    if Path(args.destination).exists():
        raise ValueError(f"{args.destination} already exists: nothing was changed; choose a new file name")
    model, payload = load_checkpoint(args.source)
    meta = dict(payload.get("meta", {}))
    meta.setdefault("converted_from", str(args.source))
    save_checkpoint(args.destination, model, meta=meta)
    log.info("wrote %s (%s)", args.destination, model.config)
    return 0


# -- info -----------------------------------------------------------------------------------
def add_model_info(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--map", help="describe this map (places, model, static-cell mask) instead of a model")
    parser.add_argument("--checkpoint", help="describe this checkpoint")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="without --checkpoint: backbone name")
    parser.add_argument("--regressor", default=None, help="without --checkpoint: regressor preset (paper|light)")
    parser.add_argument("--threads", type=count(0, 256), default=0,
                        help="report the thread settings this many threads give (0: the default)")


def run_map_info(path: str, threads: str) -> int:
    from .mapdb import MapDatabase
    database = MapDatabase.open(path)
    stamps = [p.timestamp_ns for p in database.places if p.timestamp_ns is not None]
    rows = [("map", path), ("places", str(len(database))), ("backbone", database.identity.backbone),
            ("local grid", "x".join(str(v) for v in database.identity.local_shape)),
            ("index", database.index_type), ("built with", str(database.build_info.get("checkpoint"))),
            ("with poses", str(sum(p.pose is not None for p in database.places))),
            ("stamps", f"{min(stamps) / 1e9:.3f} .. {max(stamps) / 1e9:.3f} s" if stamps else "none"),
            ("mask", database.mask.summary()), ("static threshold", f"{database.mask_settings.threshold:g}"),
            ("threads", threads)]
    width = max(len(k) for k, _ in rows)
    sys.stdout.write("".join(f"{k:<{width}}  {v}\n" for k, v in rows))
    return 0


def run_model_info(args: argparse.Namespace) -> int:
    from .models import build_model, load_checkpoint
    from .threads import configure_threads
    threads = configure_threads(args.threads)
    if args.map:
        return run_map_info(args.map, threads.describe())
    if args.checkpoint:
        model, payload = load_checkpoint(args.checkpoint)
        meta = payload.get("meta", {})
    else:
        model, meta = build_model(args.backbone, args.regressor, pretrained=False), {}
    config = model.regressor.config
    rows = [
        ("backbone", model.backbone.name),
        ("input size", f"{model.backbone.input_size}x{model.backbone.input_size}"),
        ("local grid", f"{model.backbone.local_dim}x{model.backbone.grid_size}x{model.backbone.grid_size}"),
        ("global dim", str(model.backbone.global_dim)),
        ("regressor", f"grid {config.grid}, {config.layers}+{config.residual_layers} layers, "
                      f"{config.heads} heads, ff {config.ff_dim}"),
        ("backbone params", f"{sum(p.numel() for p in model.backbone.parameters()) / 1e6:.2f} M"),
        ("regressor params", f"{sum(p.numel() for p in model.regressor.parameters()) / 1e6:.2f} M"),
        ("regressor GFLOP/pair", f"{config.gflop_per_pair():.2f}"),
        ("threads", threads.describe()),
    ] + [(f"meta.{k}", str(v)) for k, v in meta.items()]
    width = max(len(k) for k, _ in rows)
    sys.stdout.write("".join(f"{k:<{width}}  {v}\n" for k, v in rows))
    return 0


# -- query ----------------------------------------------------------------------------------
def add_query(parser: argparse.ArgumentParser) -> None:
    from .arguments import count
    from .build_map import add_model_arguments, add_ranking_arguments
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="query image file(s)")
    parser.add_argument("--map", required=True, help="map directory (from build-map)")
    add_ranking_arguments(parser)
    parser.add_argument("--show", type=count(0), default=5, help="rows printed per image (table mode)")
    parser.add_argument("--json", action="store_true", help="print one JSON list per image instead "
                        "(numbers that are not finite are null)")
    add_model_arguments(parser)


def run_query(args: argparse.Namespace) -> int:
    import json

    from .image_conversion import read_image
    from .runtime import open_localizer
    localizer = open_localizer(args.checkpoint, args.backbone, args.device, args.map, threads=args.threads,
                               runtime=args.runtime, onnx=args.onnx, reranker=args.reranker,
                               top_k=args.top_k, refine_rounds=args.refine_rounds)
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


# -- export -----------------------------------------------------------------------------------
def add_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="a new folder for backbone.onnx, regressor.onnx, model.json")
    parser.add_argument("--checkpoint", help="model checkpoint (default: the shipped model)")
    parser.add_argument("--backbone", help="without --checkpoint: backbone name")


def run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .onnx_model import export_model
    from .runtime import load_model
    model, info = load_model(args.checkpoint, args.backbone)
    meta = export_model(model, args.out, info)
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in sorted(Path(args.out).glob("*.onnx")))
    log.info("wrote %s (%s): %s; run it with --runtime onnxruntime --onnx %s", args.out, meta["backbone"], sizes,
             args.out)
    return 0


def _lazy(module: str, attr: str) -> Callable:
    """Resolve a command's function on use, so ``--help`` and unrelated commands stay fast."""
    def call(*args):
        import importlib
        return getattr(importlib.import_module(f"dhe_vpr_ros.{module}"), attr)(*args)
    return call


COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "build-map": ("embed images (folder, geo-localisation split, rosbag2) into a map",
                  _lazy("build_map", "add_arguments"), _lazy("build_map", "run")),
    "demo": ("build a map from bundled photos, run the real node on query photos, report recall",
             _lazy("demo", "add_arguments"), _lazy("demo", "run")),
    "query": ("rank map places for query images", add_query, run_query),
    "train": ("train the homography regressor (stage dhe) or fine-tune jointly (stage joint)",
              _lazy("train", "add_arguments"), _lazy("train", "run")),
    "evaluate": ("Recall@N and precision of each re-ranker on a labelled run (geo split or reference/query "
                 "folders); --sequence: after the node's sequence verification",
                 _lazy("evaluate", "add_arguments"), _lazy("evaluate", "run")),
    "calibrate": ("the loop-closure settings (min_score, sequence) that reach a target precision on your own "
                  "labelled run, written as a ROS 2 parameters file", _lazy("calibrate", "add_arguments"),
                  _lazy("calibrate", "run")),
    "convert-checkpoint": ("convert a DHE-VPR author checkpoint to ours", add_convert_checkpoint,
                           run_convert_checkpoint),
    "export": ("write the backbone and the regressor as ONNX files (dynamic batch) for onnxruntime / TensorRT",
               add_export, run_export),
    "info": ("describe a model, a checkpoint or a map (--map: places, static-cell mask)", add_model_info,
             run_model_info),
}


def build_parser() -> argparse.ArgumentParser:
    from .arguments import OneLineParser
    parser = OneLineParser(prog="python -m dhe_vpr_ros", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add, _) in COMMANDS.items():
        add(sub.add_parser(name, help=help_text, description=help_text))
    sub.add_parser("node", help="run the ROS 2 node (same as `ros2 run dhe_vpr_ros vpr_node`; "
                   "takes --ros-args)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["node"]:  # the ROS node parses its own --ros-args
        from .node import main as node_main
        return node_main(argv[1:])
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from .mapdb import MapError
    from .models import CheckpointError
    previous = signal.signal(signal.SIGTERM, _terminate)  # clean up as on Ctrl-C
    try:
        return COMMANDS[args.command][2](args)
    except (CheckpointError, MapError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:  # a file that cannot be read or written: say which
        where = f"{exc.filename}: " if exc.filename and str(exc.filename) not in str(exc) else ""
        log.error("%s%s", where, exc.strerror or exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminate(signum, frame):
    raise KeyboardInterrupt


def _entry(command: str) -> Callable[[], int]:
    """Console-script entry for one command (ROS appends --ros-args; drop it here)."""
    def run() -> int:
        argv = sys.argv[1:]
        if "--ros-args" in argv:
            argv = argv[:argv.index("--ros-args")]
        return main([command, *argv])
    return run


convert_checkpoint_main = _entry("convert-checkpoint")
model_info_main = _entry("info")
build_map_main = _entry("build-map")
query_main = _entry("query")
evaluate_main = _entry("evaluate")
calibrate_main = _entry("calibrate")
export_main = _entry("export")
train_main = _entry("train")
