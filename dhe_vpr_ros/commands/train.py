# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""``train``: the homography regressor (stage dhe), then optionally the backbone with it (stage
joint); resumable, and under torchrun one rank per process (``training`` does the work)."""
from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import fields
from pathlib import Path

from ..atomic import check_not_protected, refuse_link, remove_stale
from ..locks import LockTimeout, writer_lock
from ..runtime.threads import configure_threads
from ..reading import read_text
from ..training.config import BOUNDS, TrainConfig
from ..training.run_log import fmt
from ..training.trainer import train
from .arguments import count, number

__all__ = ["add_arguments", "run"]

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig(out="")
    parser.add_argument("--out", required=True, help="output directory (checkpoints, config, logs)")
    parser.add_argument("--stage", choices=("dhe", "joint"), default=d.stage)
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--dataset", help="geo-localisation layout: DIR/train/ and DIR/val/ with database/, queries/")
    data.add_argument("--images", nargs="+", metavar="DIR",
                      help="image folder(s), searched recursively: labelled synthetic second views")
    data.add_argument("--bag", help="rosbag2 (with --topic): labelled synthetic second views of its frames")
    parser.add_argument("--exclude", nargs="+", default=[], metavar="PATTERN",
                        help="with --images: leave out files whose name matches a pattern (e.g. 'graf*')")
    parser.add_argument("--topic")
    parser.add_argument("--backbone", default=d.backbone)
    parser.add_argument("--regressor", help="regressor preset (paper|light); default: the backbone's")
    parser.add_argument("--init-checkpoint", help="start from these weights (e.g. stage dhe's best.pt)")
    parser.add_argument("--resume", action="store_true", help="continue OUT/last.pt at its exact step")
    helps = {
        "batch-size": "pairs per step (per process under DDP)", "lr": "Adam learning rate (paper: 1e-5)",
        "clip-grad": "clip the gradient norm to this (0: off)", "margin": "triplet margin (paper: 0.1)",
        "negatives": "negatives per query (paper: 2)",
        "mining-pool": "random candidates per query for partial hard-negative mining",
        "cache-refresh": "queries between refreshes of the mining descriptor cache",
        "supervised-weight": "weight of the corner loss on labelled pairs (synthetic views)",
        "robust-px": "corner loss: distances beyond this many pixels count logarithmically (0: linearly)",
        "rei-weight": "weight of the label-free REI loss (0: off)",
        "warp-repeats": "synthetic views: reuse N fixed sets (stage dhe then embeds each view once and trains the "
                        "regressor on cached features: faster, less varied)",
        "difficulty": "synthetic views: strongest change, 0..1 of the recipe's maxima (1: tilt 60 deg, rotation 30, "
                      "zoom 0.5-2, overlap 50 %%, dusk)",
        "curriculum-epochs": "grow the views' difficulty over this many epochs (0: all at once)",
        "curriculum-start": "difficulty at the first epoch of the curriculum",
        "unfreeze-from": "joint stage: first trainable backbone block (default: cct14 6, efficientnet 8)",
        "positive-dist-train": "metres (paper: 10)", "positive-dist-val": "metres (paper: 25)",
        "val-fraction": "synthetic views: images held back for validation",
        "val-top-k": "candidates re-ranked in validation", "val-every": "validate every N epochs (and after the last)",
        "max-samples": "use at most N images", "workers": "data loader processes",
    }
    for field_name, (whole, low, high, above) in BOUNDS.items():  # the ranges config.json is checked against
        name = field_name.replace("_", "-")
        kind = count(int(low), int(high)) if whole else number(low, high, above=above)
        parser.add_argument(f"--{name}", type=kind, default=getattr(d, field_name), help=helps.get(name))
    parser.add_argument("--lr-schedule", choices=("none", "cosine"), default=d.lr_schedule)
    parser.add_argument("--device", default=d.device, help="cpu, cuda (mixed precision bf16 on GPU)")
    parser.add_argument("--threads", type=count(0, 256), default=0,
                        help="CPU threads per process (0: the cores free beside it, at most 4)")
    parser.add_argument("--no-amp", action="store_true", help="full fp32 on GPU")
    parser.add_argument("--no-tensorboard", action="store_true")
    parser.add_argument("--dump-rank-weights", action="store_true",
                        help="debug DDP: every rank writes its final weights to OUT/rankN_weights.pt")


def run(args: argparse.Namespace) -> int:
    configure_threads(args.threads)
    keys = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in keys})
    cfg.amp = not args.no_amp
    cfg.tensorboard = not args.no_tensorboard
    cfg.extra = {"dump_rank_weights": args.dump_rank_weights}
    out = Path(args.out)
    refuse_link(out, "a run folder")
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun: rank 0 holds the run folder's lock for all
        return _train(args, cfg, out)
    try:
        with writer_lock(out, 0.0, "the training run"):  # a second run into this folder at once: refused
            return _train(args, cfg, out)
    except LockTimeout as exc:
        raise ValueError(str(exc)) from None


def _train(args: argparse.Namespace, cfg: TrainConfig, out: Path) -> int:
    if out.is_dir():
        remove_stale(out)  # what a killed run of ours left (marked temporaries, their writer gone): nothing else
    if args.resume:
        saved = out / "config.json"
        if saved.is_file():  # the run's own settings win, except how many epochs to reach and where it is now
            try:
                data = json.loads(read_text(saved, "config.json", 1 << 24))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{saved} is not JSON ({exc}): restore it from the run, or start a new run") from None
            stored = TrainConfig.from_dict(data, str(saved))
            stored.epochs, stored.device, stored.out = args.epochs, args.device, str(out)
            cfg = stored
    elif out.exists() and not out.is_dir() or out.is_dir() and any(out.iterdir()):
        names = sorted(p.name for p in out.iterdir())[:5] if out.is_dir() else []
        raise ValueError(f"train --out {out} is not a new folder ({', '.join(names) or 'a file'}): nothing was "
                         "changed; choose a new folder, or --resume to continue the run in it")
    if out.is_dir():
        check_not_protected(out, "the run folder")
    metrics = train(cfg, resume=args.resume)
    if metrics:
        log.info("final validation: %s", fmt(metrics))
    return 0
