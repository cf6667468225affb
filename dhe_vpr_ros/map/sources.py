# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Where images come from: image folders, geo-localisation splits, rosbag2 recordings.

Each source yields ``Frame`` records lazily (the image is decoded when it is needed), so a
map of a long recording never holds all images in memory.

Geo-localisation layout (as in the VPR benchmarks): ``DIR/database/`` and ``DIR/queries/``
whose file names carry UTM coordinates: ``@utm_east@utm_north@...@.jpg``.
"""
from __future__ import annotations

import logging
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..image_conversion import ImageConversionError, read_image, to_rgb
from ..reading import InputError, input_mode
from .records import Pose

__all__ = ["IMAGE_SUFFIXES", "Frame", "bag_frames", "folder_frames", "geo_split", "list_images", "parse_utm"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class Frame:
    """One image to put in a map or to query with; ``load()`` returns RGB uint8."""

    source: str
    load: Callable[[], np.ndarray]
    timestamp_ns: int | None = None
    pose: Pose | None = None
    utm: tuple[float, float] | None = None


def list_images(folder: str | Path) -> list[Path]:
    """Image files anywhere under ``folder``, sorted by path; an error if there are none. A map folder
    inside it (a map built into its own image folder) is left out with its files; what cannot be
    listed or read as a file (an unreadable subfolder, a link to nothing, a FIFO) is left out and said,
    once, with a count."""
    from .format import is_map
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files, unlisted, unreadable, maps = [], [], [], []
    for root, dirs, names in os.walk(folder, onerror=lambda exc: unlisted.append(exc.filename)):
        here = Path(root)
        if here != folder and is_map(here):
            maps.append(here)
            dirs.clear()
            continue
        for name in names:
            path = here / name
            if path.suffix.lower() in IMAGE_SUFFIXES:
                (files if path.is_file() else unreadable).append(path)
    if maps:
        log.warning("left out %d map folder(s) inside %s: %s", len(maps), folder, ", ".join(map(str, maps[:3])))
    if unlisted or unreadable:
        log.warning("left out %d folder(s) of %s that could not be listed (%s) and %d image name(s) that are not "
                    "readable files (links to nothing, FIFOs, devices: %s)", len(unlisted), folder,
                    ", ".join(map(str, unlisted[:3])) or "none", len(unreadable),
                    ", ".join(map(str, unreadable[:3])) or "none")
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return sorted(files)


def parse_utm(path: str | Path) -> tuple[float, float]:
    """``@utm_east@utm_north@...`` in a file name -> (east, north); ValueError naming the file."""
    parts = Path(path).name.split("@")
    try:
        return float(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        raise ValueError(f"{path}: file name has no UTM coordinates; geo-localisation datasets name "
                         "images '@utm_east@utm_north@...@.jpg'") from None


def folder_frames(folder: str | Path, with_utm: bool = False) -> list[Frame]:
    """Frames of an image folder; ``with_utm`` parses UTM from every name (all must have it)."""
    return [Frame(str(path), (lambda p=path: read_image(p)), utm=parse_utm(path) if with_utm else None)
            for path in list_images(folder)]


def geo_split(directory: str | Path, part: str) -> Path:
    """``DIR/part`` of a geo-localisation split (``part``: database or queries)."""
    directory = Path(directory)
    if directory.name == part and directory.is_dir():
        return directory
    if not (directory / part).is_dir():
        raise FileNotFoundError(f"{directory} is not a geo-localisation split: {part}/ is missing "
                                "(expected DIR/database/ and DIR/queries/)")
    return directory / part


# -- rosbag2 ----------------------------------------------------------------------------------
def _stamp_ns(msg, fallback: int) -> int:
    header = getattr(msg, "header", None)
    if header is None:
        return fallback
    ns = int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
    return ns if ns > 0 else fallback


def _pose_of(msg) -> Pose:
    """nav_msgs/Odometry or geometry_msgs/PoseStamped -> a Pose."""
    pose = msg.pose.pose if hasattr(msg.pose, "pose") else msg.pose
    return Pose(msg.header.frame_id, (float(pose.position.x), float(pose.position.y), float(pose.position.z)),
                (float(pose.orientation.x), float(pose.orientation.y), float(pose.orientation.z),
                 float(pose.orientation.w)))


BAG_FILES = (".db3", ".mcap", ".yaml")  # what rosbags opens in a rosbag2 folder


def _bag_path(path: str | Path) -> Path:
    """rosbags opens a rosbag2 directory; accept a .db3/.mcap file inside one too. The bag and every
    file of it rosbags would open must be a regular file (a folder for the bag itself): a FIFO or a
    device there would block the reader for ever, so it is refused, named."""
    path = Path(path)
    mode = input_mode(path, "rosbag")
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise InputError(f"the bag {path} is not a rosbag2 file or folder (a FIFO, a socket or a device)")
    folder = path if stat.S_ISDIR(mode) else path.parent if (path.parent / "metadata.yaml").is_file() else None
    if folder is not None:
        for entry in folder.iterdir():
            if entry.suffix in BAG_FILES and not entry.is_file():
                raise InputError(f"the bag {path}: {entry.name} is not a regular file (a FIFO, a device or a "
                                 "link to nothing): not a rosbag2 recording")
    return folder if folder is not None else path


def bag_frames(bag: str | Path, topic: str, pose_topic: str | None = None,
               min_interval_sec: float = 0.0, min_distance_m: float = 0.0,
               max_pose_gap_sec: float = 0.5) -> Iterator[Frame]:
    """See ``_bag_frames``; a bag that cannot be read (truncated, not a rosbag2) is a
    ValueError naming it, whenever it shows."""
    import sqlite3

    from rosbags.highlevel import AnyReaderError
    from rosbags.rosbag2 import ReaderError
    try:
        yield from _bag_frames(bag, topic, pose_topic, min_interval_sec, min_distance_m, max_pose_gap_sec)
    except (AnyReaderError, ReaderError, sqlite3.DatabaseError, EOFError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read the bag {bag}: {reason} (truncated, or not a rosbag2 recording?)") from None


def _bag_frames(bag: str | Path, topic: str, pose_topic: str | None = None,
                min_interval_sec: float = 0.0, min_distance_m: float = 0.0,
                max_pose_gap_sec: float = 0.5) -> Iterator[Frame]:
    """Frames of one Image or CompressedImage topic of a rosbag2 (.db3 or .mcap).

    Stamps are the header stamps (what a live node sees), else the bag's receive time. With
    ``pose_topic`` (Odometry or PoseStamped) each frame gets the pose nearest in time (within
    ``max_pose_gap_sec``). Subsampling keeps a frame when it is ``min_interval_sec`` after and,
    given poses, ``min_distance_m`` away from the last kept one. Undecodable messages are
    logged and skipped.
    """
    from rosbags.highlevel import AnyReader

    with AnyReader([_bag_path(bag)]) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        if topic not in topics:
            raise ValueError(f"topic {topic!r} is not in {bag}; it has: {', '.join(sorted(topics))}")
        if not topics[topic].endswith(("/Image", "/CompressedImage")):
            raise ValueError(f"topic {topic!r} is a {topics[topic]}, not sensor_msgs/Image or CompressedImage")
        pose_stamps, poses = np.zeros(0, np.int64), []
        if pose_topic:
            if pose_topic not in topics:
                raise ValueError(f"pose topic {pose_topic!r} is not in {bag}; it has: {', '.join(sorted(topics))}")
            conns = [c for c in reader.connections if c.topic == pose_topic]
            stamped = []
            for conn, t, raw in reader.messages(connections=conns):
                msg = reader.deserialize(raw, conn.msgtype)
                stamped.append((_stamp_ns(msg, t), _pose_of(msg)))
            stamped.sort(key=lambda item: item[0])
            pose_stamps = np.array([s for s, _ in stamped], np.int64)
            poses = [p for _, p in stamped]
        conns = [c for c in reader.connections if c.topic == topic]
        last_t, last_xyz = None, None
        for conn, t, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            stamp = _stamp_ns(msg, t)
            pose = None
            if len(pose_stamps):
                j = int(np.argmin(np.abs(pose_stamps - stamp)))
                if abs(int(pose_stamps[j]) - stamp) <= max_pose_gap_sec * 1e9:
                    pose = poses[j]
            if last_t is not None and (stamp - last_t) < min_interval_sec * 1e9:
                continue
            if min_distance_m > 0 and pose is not None and last_xyz is not None \
                    and math.dist(pose.position, last_xyz) < min_distance_m:
                continue
            try:
                image = to_rgb(msg)
            except ImageConversionError as exc:
                log.warning("%s at %d ns: skipped (%s)", topic, stamp, exc)
                continue
            last_t = stamp
            if pose is not None:
                last_xyz = pose.position
            yield Frame(f"{topic}@{stamp}", (lambda img=image: img), stamp, pose)
