# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Options shared by the commands, and numbers that are checked when they are parsed.

Every numeric option of every command takes one of these types, so a NaN, a negative count or
an absurd size (``--refine-rounds 1000000000``) ends in ``prog: error: argument --x: ...`` and
exit code 2 before anything is loaded or written. The model, ranking, labelled-run and
loop-closure options are declared here once, for every command that takes them.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import fields

__all__ = ["OneLineParser", "add_model_arguments", "add_policy_arguments", "add_ranking_arguments",
           "add_run_arguments", "count", "counts", "labelled_run", "number", "policy_from_args"]


class OneLineParser(argparse.ArgumentParser):
    """argparse with its error as one line (the usage is in --help), exit code 2."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def count(minimum: int = 1, maximum: int | None = None):
    """An int type from ``minimum`` to ``maximum`` inclusive."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum or maximum is not None and value > maximum:
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise argparse.ArgumentTypeError(f"{value} is out of range: it must be at least {minimum}{upper}")
        return value
    parse.__name__ = "whole number"
    return parse


def counts(minimum: int = 1, maximum: int | None = None):
    """A comma-separated list of whole numbers from ``minimum`` to ``maximum``, strictly increasing (each
    once): ``1,5,10``."""
    single = count(minimum, maximum)

    def parse(text: str) -> tuple[int, ...]:
        values = tuple(single(part.strip()) for part in text.split(","))
        if any(b <= a for a, b in zip(values, values[1:])):
            raise argparse.ArgumentTypeError(f"{text!r}: give each value once, in increasing order (e.g. 1,5,10)")
        return values
    parse.__name__ = "list of whole numbers"
    return parse


def number(minimum: float | None = None, maximum: float | None = None, above: bool = False):
    """A finite float type, at least (or, with ``above``, more than) ``minimum``, at most ``maximum``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        low_ok = minimum is None or (value > minimum if above else value >= minimum)
        if not low_ok or maximum is not None and value > maximum:
            parts = ([f"{'above' if above else 'at least'} {minimum:g}"] if minimum is not None else []) + \
                ([f"at most {maximum:g}"] if maximum is not None else [])
            raise argparse.ArgumentTypeError(f"{value:g} is out of range: it must be {' and '.join(parts)}")
        return value
    parse.__name__ = "number"
    return parse


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    from ..runtime.loading import PRECISIONS, RUNTIMES
    parser.add_argument("--checkpoint", help="model checkpoint (default: the shipped model)")
    parser.add_argument("--backbone", help="without --checkpoint: backbone name")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (cuda falls back to cpu)")
    parser.add_argument("--threads", type=count(0, 256), default=0,
                        help="CPU threads for the network (0: the cores free beside it, at most 4; doc/speed.md)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto",
                        help="auto (default): the checkpoint's export in onnxruntime when `export` wrote one, else "
                             "PyTorch; torch; or onnxruntime with the exported files in --onnx")
    parser.add_argument("--onnx", help="with --runtime onnxruntime: the folder `export` wrote")
    parser.add_argument("--precision", choices=PRECISIONS, default="float",
                        help="float (default), or int8: the int8 backbone `export --int8` wrote (onnxruntime; a map "
                             "built with one is queried with the same)")


def add_ranking_arguments(parser: argparse.ArgumentParser, multiple: bool = False) -> None:
    """--reranker (or --rerankers), --top-k and --refine-rounds, as query and evaluate take them."""
    from ..method.rerank import DEFAULT_REFINE_ROUNDS, DEFAULT_REGRESSED, MAX_REFINE_ROUNDS, RERANKERS
    if multiple:
        parser.add_argument("--rerankers", default=",".join(RERANKERS),
                            help=f"comma-separated, from {','.join(RERANKERS)}")
    else:
        parser.add_argument("--reranker", choices=RERANKERS, default="dhe")
    parser.add_argument("--top-k", type=count(1, 1000), default=32, help="candidates retrieved and re-ranked")
    parser.add_argument("--refine-rounds", type=count(0, MAX_REFINE_ROUNDS), default=DEFAULT_REFINE_ROUNDS,
                        help="dhe: rounds of refitting the regressed homography to its inlier matches (0: off)")
    parser.add_argument("--regressor-candidates", type=count(0, 1000), default=DEFAULT_REGRESSED,
                        help="dhe: candidates the regressor runs on, those the matches' shift start scores best "
                             f"(0: every candidate; default {DEFAULT_REGRESSED})")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the labelled run comes from (evaluate and calibrate take the same)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="geo-localisation split: DIR/database/ and DIR/queries/")
    source.add_argument("--reference", help="a reference run's images, one per map place, in file-name order "
                                            "(with --queries: the same route again)")
    parser.add_argument("--queries", help="with --reference: the query run's images, frame i at reference frame i")
    parser.add_argument("--tolerance", type=count(0, 10000), default=2,
                        help="with --reference: frames either side that count as right (default 2)")
    parser.add_argument("--positive-dist-threshold", type=number(0.0, above=True), default=25.0,
                        help="with --dataset: metres")
    parser.add_argument("--map", help="a map built beforehand from the reference frames (default: build one in "
                                      "memory)")


def labelled_run(args: argparse.Namespace):
    """The labelled run the options name (``loop.groundtruth.LabelledRun``)."""
    from ..loop.groundtruth import GroundTruthError, folder_pair, geo_run
    if args.dataset:
        return geo_run(args.dataset, args.positive_dist_threshold)
    if not args.queries:
        raise GroundTruthError("--reference needs --queries (the query run of the same route)")
    return folder_pair(args.reference, args.queries, args.tolerance)


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """The node's loop-closure settings, same names, defaults and meaning (``ros.parameters``)."""
    from ..loop.policy import LOOP_CLOSURE_PARAMETERS
    from ..ros.parameters import PARAMETERS
    for name in LOOP_CLOSURE_PARAMETERS:
        spec = PARAMETERS[name]
        low, high = spec.bounds
        kind = count(low, high) if isinstance(spec.default, int) else number(low, high)
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=spec.default,
                            help=f"{spec.description} (the node's {name}; default {spec.default:g})")


def policy_from_args(args: argparse.Namespace):
    """The ``loop.policy.LoopPolicy`` of the options given (ValueError for settings whose
    sequence search would be over its budget with ``--top-k`` candidates)."""
    from ..loop.policy import LoopPolicy
    policy = LoopPolicy.from_mapping({f.name: getattr(args, f.name) for f in fields(LoopPolicy)
                                      if hasattr(args, f.name)})
    if getattr(args, "sequence", True):
        policy.sequence().check_work(args.top_k)
    return policy
