# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""``build-map``: embed images from a folder, a geo-localisation split or a rosbag2 into a map.

Appending keeps existing place ids. The map on disk is replaced atomically at the end, so an
interrupted build leaves the previous map as it was. ``torchrun --nproc_per_node N -m dhe_vpr_ros
build-map ...`` (one machine or several; gloo on CPUs, NCCL on GPUs) shares the embedding between
the ranks; rank 0 writes the same map one process would (``map.sharded``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Iterable

from ..locks import LockTimeout, writer_lock
from ..map import MapError
from ..map.codec import CODECS, COMPACT, DEFAULT_GRIDS, FLOAT16
from ..map.index import INDEX_TYPES
from ..map.building import add_frames, check_new_frames, mask_settings, open_for_writing
from ..map.sources import Frame, bag_frames, folder_frames, geo_split
from ..map.database import MapDatabase
from ..map.sharded import add_frames_sharded
from ..map.static_mask import DEFAULT_THRESHOLD
from ..method.identity import model_identity
from ..runtime import open_localizer
from ..runtime.distributed import local_world_size, setup_distributed
from ..runtime.threads import available_cpus
from .arguments import add_model_arguments, count, number

__all__ = ["add_arguments", "run"]

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", required=True, help="map directory to write")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of images (searched recursively, sorted by name)")
    source.add_argument("--geo-split", help="geo-localisation split: DIR/database/ with "
                        "@utm_east@utm_north@...@.jpg names (UTM stored per place)")
    source.add_argument("--bag", help="rosbag2 recording (directory, .db3 or .mcap)")
    parser.add_argument("--topic", help="with --bag: Image or CompressedImage topic")
    parser.add_argument("--pose-topic", help="with --bag: nav_msgs/Odometry or geometry_msgs/PoseStamped")
    parser.add_argument("--min-interval-sec", type=number(0.0), default=0.0, help="with --bag: keep a frame "
                        "only this long after the last kept one")
    parser.add_argument("--min-distance-m", type=number(0.0), default=0.0, help="with --bag and --pose-topic: "
                        "keep a frame only this far from the last kept one")
    parser.add_argument("--append", action="store_true", help="add to an existing map (ids kept)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing map")
    parser.add_argument("--lock-timeout", type=number(0.0, 1e6), default=600.0,
                        help="seconds to wait while another process writes the same map (default 600)")
    parser.add_argument("--index", choices=INDEX_TYPES, default="flat",
                        help="global index: exact (flat); approximate for very large maps: ivf (inverted lists, "
                             "measured at a million places in doc/maps.md) or hnsw")
    parser.add_argument("--grids", choices=CODECS, default=DEFAULT_GRIDS,
                        help=f"how a new map stores its local grids: {COMPACT} (default; 4.6x smaller, format 2) or "
                             f"{FLOAT16} (as embedded, format 1, what older versions read); a map appended to keeps "
                             "its own")
    parser.add_argument("--static-threshold", type=number(0.0, 1.0, above=True), default=None,
                        help=f"grid cells whose descriptors are this constant over the map's places (norm of their "
                             f"mean, 0..1] are static and never vote (a lens ring, a hood, a timestamp); 1: learn "
                             f"none (default {DEFAULT_THRESHOLD}, or the map's own with --append)")
    parser.add_argument("--mask", help="image the size of the camera's frames, white where matching may look")
    parser.add_argument("--roi", type=number(0.0, 0.99), nargs=4, metavar=("LEFT", "RIGHT", "TOP", "BOTTOM"),
                        help="margins (fractions of the frame) that never vote, e.g. 0 0 0 0.2 for a hood")
    add_model_arguments(parser)
    parser.add_argument("--batch-size", type=count(1, 4096), default=16)


def frames_from_args(args: argparse.Namespace) -> tuple[Iterable[Frame], int | None]:
    if args.images:
        frames = folder_frames(args.images)
        return frames, len(frames)
    if args.geo_split:
        frames = folder_frames(geo_split(args.geo_split, "database"), with_utm=True)
        return frames, len(frames)
    if not args.topic:
        raise ValueError("--bag needs --topic (the camera's Image or CompressedImage topic)")
    return bag_frames(args.bag, args.topic, args.pose_topic, args.min_interval_sec, args.min_distance_m), None


def inputs_digest(args: argparse.Namespace, frames) -> str:
    """What every torchrun rank must agree on: the command's arguments (but the device and threads, which
    may differ between machines) and its inputs (each image's path under its folder and size, or the
    bag's files and sizes)."""
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in ("device", "threads", "lock_timeout")}
    if args.bag:
        root = Path(args.bag)
        files = sorted(root.iterdir()) if root.is_dir() else [root]
        inputs = [(p.name, p.stat().st_size) for p in files if p.is_file()]
    else:
        root = Path(args.images or args.geo_split)
        inputs = [(os.path.relpath(f.source, root), os.path.getsize(f.source)) for f in frames]
    return hashlib.sha256(json.dumps([settings, inputs], default=str).encode()).hexdigest()


def run(args: argparse.Namespace) -> int:
    """One writer per map across processes: the lock is held from reading the map (--append)
    to swapping in the new version, so two appends both land (the second waits). Under torchrun
    every rank embeds its share of the frames and rank 0 alone writes (``map.sharded``)."""
    group = setup_distributed(args.device)
    if group.enabled and not args.threads:  # the ranks on this machine share its cores
        args.threads = max(1, available_cpus() // local_world_size())
    try:
        frames, total = frames_from_args(args)
        group.agree("arguments and inputs", inputs_digest(args, frames))
        if group.rank != 0:
            return _embed_share(args, frames, total, group)
        try:
            with writer_lock(args.output, args.lock_timeout):
                return _build(args, frames, total, group)
        except LockTimeout as exc:
            raise MapError(str(exc)) from None
    finally:
        group.close()


def _localizer(args: argparse.Namespace, new_map):
    return open_localizer(args.checkpoint, args.backbone, args.device, threads=args.threads, runtime=args.runtime,
                          onnx=args.onnx, precision=args.precision, reranker="none", new_map=new_map)


def _embed_share(args: argparse.Namespace, frames, total, group) -> int:
    """A rank other than 0: embed its frames for rank 0's map (it writes nothing itself)."""
    localizer = _localizer(args, lambda model, info: MapDatabase(model_identity(model)))
    add_frames_sharded(localizer, frames, group.gather, group.rank, group.world, args.batch_size, total)
    return 0


def _build(args: argparse.Namespace, frames, total, group) -> int:
    localizer = _localizer(args, lambda m, info: open_for_writing(args.output, m, info, args.append, args.overwrite,
                                                                  args.index, args.grids))
    database = localizer.database
    # a bad mask fails here, before hours of work
    database.set_mask_settings(mask_settings(database, args.mask, args.roi, args.static_threshold))
    before = len(database)
    if group.enabled:
        ids = add_frames_sharded(localizer, frames, group.gather, 0, group.world, args.batch_size, total)
    else:
        ids = add_frames(localizer, frames, args.batch_size, total)
    if not ids:
        raise ValueError("no usable images were found; nothing written")
    if args.mask:  # now the frames' size is known: the mask must have their shape
        database.set_mask_settings(mask_settings(database, args.mask, args.roi, args.static_threshold))
    check_new_frames(database, before)
    database.save(args.output, replace=args.overwrite)
    log.info("map %s: %d places (%d new, ids %d..%d); %s", args.output, len(database), len(ids), before, ids[-1],
             database.mask.summary())
    return 0
