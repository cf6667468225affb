# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""``build-map``: embed images from a folder, a geo-localisation split or a rosbag2 into a map.

Appending keeps existing place ids. The map on disk is replaced atomically at the end, so an
interrupted build leaves the previous map as it was.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from .datasets import Frame, bag_frames, folder_frames, geo_split
from .image_conversion import ImageConversionError
from .localizer import Localizer, model_identity
from .arguments import count, number
from .atomic import LockTimeout, writer_lock
from .mapdb import MapDatabase, MapError, Place, check_place, check_replaceable
from .runtime import RUNTIMES, open_localizer
from .static_mask import DEFAULT_THRESHOLD, MaskSettings, user_mask

log = logging.getLogger(__name__)


def add_frames(localizer: Localizer, frames: Iterable[Frame], batch_size: int = 16,
               total: int | None = None, desc: str = "embedding") -> list[int]:
    """Embed frames in batches and append them to the localizer's map; unreadable images and
    records the map could not read back (a NaN pose, a negative stamp) are logged, counted and
    skipped before anything is embedded. Returns the new place ids."""
    ids: list[int] = []
    skipped = 0
    batch_images, batch_places = [], []

    def flush():
        if batch_images:
            ids.extend(localizer.add_images(batch_images, batch_places))
            batch_images.clear()
            batch_places.clear()

    for frame in tqdm(frames, total=total, desc=desc, unit="img", disable=None):
        place = Place(-1, frame.source, frame.timestamp_ns, frame.pose, frame.utm)
        try:
            check_place(place)
            image = frame.load()
        except (ImageConversionError, FileNotFoundError, ValueError) as exc:
            log.warning("skipped %s: %s", frame.source, exc)
            skipped += 1
            continue
        batch_images.append(image)
        batch_places.append(place)
        if len(batch_images) >= batch_size:
            flush()
    flush()
    if skipped:
        log.warning("%d frames were skipped (see above); %d added", skipped, len(ids))
    return ids


def open_for_writing(path: str | Path, model, build_info: dict, append: bool = False,
                     overwrite: bool = False, index_type: str = "flat") -> MapDatabase:
    """An existing map to append to (checked against the model) or a new empty one; MapError
    for a target that is not a map, or that cannot be written."""
    path = Path(path)
    exists = (path / "manifest.json").exists()
    if exists and append:
        database = MapDatabase.open(path, expect=model_identity(model))
    elif exists and not overwrite:
        raise MapError(f"a map already exists at {path}; pass --append to add to it or "
                       "--overwrite to replace it")
    else:
        database = MapDatabase(model_identity(model), index_type, build_info=dict(build_info))
    target = path.resolve()
    check_replaceable(target)  # before hours of embedding, not at the save
    parent = target.parent
    while not parent.exists():  # the first folder that exists is where the map will be made
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MapError(f"cannot write the map {path}: {parent} is not writable")
    database.spill_dir = str(target.parent) if target.parent.exists() else None
    return database


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
    parser.add_argument("--index", choices=("flat", "hnsw"), default="flat",
                        help="global index: exact (flat) or approximate HNSW for very large maps")
    parser.add_argument("--static-threshold", type=number(0.0, 1.0, above=True), default=None,
                        help=f"grid cells whose descriptors are this constant over the map's places (norm of their "
                             f"mean, 0..1] are static and never vote (a lens ring, a hood, a timestamp); 1: learn "
                             f"none (default {DEFAULT_THRESHOLD}, or the map's own with --append)")
    parser.add_argument("--mask", help="image the size of the camera's frames, white where matching may look")
    parser.add_argument("--roi", type=number(0.0, 0.99), nargs=4, metavar=("LEFT", "RIGHT", "TOP", "BOTTOM"),
                        help="margins (fractions of the frame) that never vote, e.g. 0 0 0 0.2 for a hood")
    add_model_arguments(parser)
    parser.add_argument("--batch-size", type=count(1, 4096), default=16)


def add_ranking_arguments(parser: argparse.ArgumentParser, multiple: bool = False) -> None:
    """--reranker (or --rerankers), --top-k and --refine-rounds, as query and evaluate take them."""
    from .rerank import DEFAULT_REFINE_ROUNDS, MAX_REFINE_ROUNDS, RERANKERS
    if multiple:
        parser.add_argument("--rerankers", default=",".join(RERANKERS),
                            help=f"comma-separated, from {','.join(RERANKERS)}")
    else:
        parser.add_argument("--reranker", choices=RERANKERS, default="dhe")
    parser.add_argument("--top-k", type=count(1, 1000), default=32, help="candidates retrieved and re-ranked")
    parser.add_argument("--refine-rounds", type=count(0, MAX_REFINE_ROUNDS), default=DEFAULT_REFINE_ROUNDS,
                        help="dhe: rounds of refitting the regressed homography to its inlier matches (0: off)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="model checkpoint (default: the shipped model)")
    parser.add_argument("--backbone", help="without --checkpoint: backbone name")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (cuda falls back to cpu)")
    parser.add_argument("--threads", type=count(0, 256), default=0,
                        help="CPU threads for the network (0: the CPUs available, at most 4; see README)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="torch",
                        help="run the networks in PyTorch, or the exported ONNX files (--onnx) in onnxruntime")
    parser.add_argument("--onnx", help="with --runtime onnxruntime: the folder `export` wrote")


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


def mask_settings(args: argparse.Namespace, database: MapDatabase) -> MaskSettings:
    """The map's mask settings: the options given, else what the map already has (--append)."""
    old = database.mask_settings
    grid = database.identity.local_shape[1:]
    roi = tuple(args.roi) if args.roi else (old.roi if args.mask is None else (0.0, 0.0, 0.0, 0.0))
    frame = database.places[0].image_size if database.places else None
    if args.mask is None and not args.roi:
        usable, user_file = old.user_usable, old.user_file
    else:
        usable, user_file = user_mask(grid, args.mask, roi, frame), args.mask
    threshold = old.threshold if args.static_threshold is None else args.static_threshold
    return MaskSettings(threshold, usable, roi, user_file)


def run(args: argparse.Namespace) -> int:
    """One writer per map across processes: the lock is held from reading the map (--append)
    to swapping in the new version, so two appends both land (the second waits)."""
    frames, total = frames_from_args(args)
    try:
        with writer_lock(args.output, args.lock_timeout):
            return _build(args, frames, total)
    except LockTimeout as exc:
        raise MapError(str(exc)) from None


def _build(args: argparse.Namespace, frames, total) -> int:
    localizer = open_localizer(args.checkpoint, args.backbone, args.device, threads=args.threads,
                               runtime=args.runtime, onnx=args.onnx, reranker="none",
                               new_map=lambda m, info: open_for_writing(args.output, m, info, args.append,
                                                                        args.overwrite, args.index))
    database = localizer.database
    database.set_mask_settings(mask_settings(args, database))  # a bad mask fails here, before hours of work
    before = len(database)
    ids = add_frames(localizer, frames, args.batch_size, total)
    if not ids:
        raise ValueError("no usable images were found; nothing written")
    if args.mask:  # now the frames' size is known: the mask must have their shape
        database.set_mask_settings(mask_settings(args, database))
    database.save(args.output, replace=args.overwrite)
    log.info("map %s: %d places (%d new, ids %d..%d); %s", args.output, len(database), len(ids), before, ids[-1],
             database.mask.summary())
    return 0
