# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""``info``, ``convert-checkpoint`` and ``export``: describe a model, a checkpoint or a map; turn an
author checkpoint into ours; write the networks as ONNX files."""
from __future__ import annotations

import argparse
import logging
import stat
import sys
from pathlib import Path

import numpy as np

from .arguments import count

__all__ = ["add_convert_checkpoint", "add_export", "add_model_info", "run_convert_checkpoint", "run_export",
           "run_model_info"]

log = logging.getLogger("dhe_vpr_ros")


# -- convert-checkpoint ---------------------------------------------------------------------
def add_convert_checkpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="checkpoint to read (ours, or the DHE-VPR authors' layout)")
    parser.add_argument("destination", help="where to write a dhe_vpr_ros checkpoint")


def run_convert_checkpoint(args: argparse.Namespace) -> int:
    from ..method.models import load_checkpoint, save_checkpoint
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
    from ..map.database import MapDatabase
    database = MapDatabase.open(path)
    stamps = [p.timestamp_ns for p in database.places if p.timestamp_ns is not None]
    rows = [("map", path), ("places", str(len(database))), ("backbone", database.identity.backbone),
            ("local grid", "x".join(str(v) for v in database.identity.local_shape)),
            ("index", database.index_type), ("grids", _grid_summary(database)),
            ("built with", str(database.build_info.get("checkpoint"))),
            ("with poses", str(sum(p.pose is not None for p in database.places))),
            ("stamps", f"{min(stamps) / 1e9:.3f} .. {max(stamps) / 1e9:.3f} s" if stamps else "none"),
            ("mask", database.mask.summary()), ("static threshold", f"{database.mask_settings.threshold:g}"),
            ("threads", threads)]
    width = max(len(k) for k, _ in rows)
    sys.stdout.write("".join(f"{k:<{width}}  {v}\n" for k, v in rows))
    return 0


def _grid_summary(database) -> str:
    codec, shape = database.codec, database.identity.local_shape
    size = codec.row_bytes(shape)
    kind = f"{codec.name}, {codec.dims} directions" if codec.compact else codec.name
    return f"{kind}: {size / 1000:.1f} KB a place ({2 * int(np.prod(shape)) / size:.1f}x smaller than float16)" \
        if codec.compact else f"{kind}: {size / 1000:.1f} KB a place"


def run_model_info(args: argparse.Namespace) -> int:
    from ..method.models import build_model, load_checkpoint
    from ..runtime.threads import configure_threads
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


# -- export -----------------------------------------------------------------------------------
def add_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="a new folder for backbone.onnx, regressor.onnx, model.json (default: the "
                                      "user's cache folder for this checkpoint, where --runtime auto finds it)")
    parser.add_argument("--checkpoint", help="model checkpoint (default: the shipped model)")
    parser.add_argument("--backbone", help="without --checkpoint: backbone name")
    parser.add_argument("--int8", action="store_true",
                        help="also an int8 backbone (onnxruntime static quantisation, calibrated on frames of your "
                             "camera: --calibration-images or --map); the node runs it with precision int8")
    parser.add_argument("--calibration-images", help="with --int8: a folder of your camera's frames (up to "
                                                     "64, evenly spread, are used)")
    parser.add_argument("--map", help="with --int8: calibrate on the images this map was built from")


def calibration_frames(args: argparse.Namespace) -> list:
    """Loaders of the frames ``--int8`` calibrates on: ``--calibration-images``, else the map's own images."""
    from ..map.sources import folder_frames
    from ..runtime.quantize import pick_evenly
    if args.calibration_images and args.map:
        raise ValueError("give --calibration-images or --map, not both")
    if args.calibration_images:
        return [frame.load for frame in pick_evenly(folder_frames(args.calibration_images))]
    if not args.map:
        raise ValueError("--int8 calibrates on frames of your camera: give --calibration-images DIR or --map MAP")
    return _map_images(args.map)


def _map_images(path: str) -> list:
    """Loaders of the image files a map was built from that are still there (a bag's frames are not files)."""
    from ..image_conversion import read_image
    from ..map.database import MapDatabase
    from ..reading import input_mode
    from ..runtime.quantize import pick_evenly
    sources = []
    for place in MapDatabase.open(path).places:
        try:
            if place.source and stat.S_ISREG(input_mode(place.source, "image")):
                sources.append(place.source)
        except (OSError, ValueError):
            continue
    if not sources:
        raise ValueError(f"map {path} names no image file that is still there (built from a bag, or moved): give "
                         "--calibration-images DIR with frames of the camera")
    return [lambda s=source: read_image(s) for source in pick_evenly(sources)]


def run_export(args: argparse.Namespace) -> int:
    from ..runtime.exports import cache_folder
    from ..runtime.loading import load_model
    from ..runtime.onnx_export import export_model
    from ..runtime.quantize import check_calibration, check_quantisable
    if not args.int8 and (args.calibration_images or args.map):
        raise ValueError("--calibration-images and --map are for --int8: add --int8")
    calibration = calibration_frames(args) if args.int8 else None  # before the model loads: a wrong option fails fast
    if args.int8:
        check_calibration(len(calibration))
    model, info = load_model(args.checkpoint, args.backbone)
    if args.int8:
        check_quantisable(model.backbone.name)
    out = args.out
    if out is None:
        if not info.get("checkpoint_sha256"):
            raise ValueError("a model without a checkpoint has no cache folder: give --out DIR")
        out = str(cache_folder(info["checkpoint_sha256"]))
    meta = export_model(model, out, info, calibration=calibration)
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in sorted(Path(out).glob("*.onnx")))
    how = "--runtime auto (the default) finds it" if args.out is None else \
        f"run it with --runtime onnxruntime --onnx {out}"
    if "int8" in meta:
        how += "; precision int8 runs backbone.int8.onnx (build the map with it too)"
    log.info("wrote %s (%s): %s; %s", out, meta["backbone"], sizes, how)
    return 0
