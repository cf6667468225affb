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

from .arguments import OneLineParser
from .models import (add_convert_checkpoint, add_export, add_model_info, run_convert_checkpoint, run_export,
                     run_model_info)
from .query import add_query, run_query

log = logging.getLogger("dhe_vpr_ros")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="[%(levelname)s] %(name)s: %(message)s")


def _lazy(module: str, attr: str) -> Callable:
    """Resolve a command's function on use, so ``--help`` and unrelated commands stay fast."""
    def call(*args):
        import importlib
        return getattr(importlib.import_module(f"dhe_vpr_ros.commands.{module}"), attr)(*args)
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
        from ..ros.process import main as node_main
        return node_main(argv[1:])
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    if hasattr(sys.stdout, "reconfigure"):  # file names that are not UTF-8 print as the bytes they are
        sys.stdout.reconfigure(errors="surrogateescape")
    from ..map.format import MapError
    from ..method.models import CheckpointError
    previous = signal.signal(signal.SIGTERM, _terminate)  # clean up as on Ctrl-C
    try:
        return COMMANDS[args.command][2](args)
    except (CheckpointError, MapError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:  # a file that cannot be read or written: say which
        log.error("%s", os_error_line(exc))
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def os_error_line(exc: OSError) -> str:
    """One line for an error of the file system, always naming the path(s) it concerns."""
    from ..atomic import WriteError
    if isinstance(exc, WriteError):
        return str(exc)
    text = exc.strerror or str(exc)
    paths = [str(p) for p in (exc.filename, exc.filename2) if p]
    return f"{' -> '.join(paths)}: {text}" if paths and not text.startswith(paths[0]) else text


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
