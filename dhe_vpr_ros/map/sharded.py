# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Filling one map from several processes (``torchrun ... build-map``): each rank embeds the frames
``i`` with ``i % world == rank``; rank 0 gathers them, a block at a time, and adds them in frame
order, so the map has the place ids, the order and (within float tolerance) the descriptors one
process gives. Only rank 0 writes; ``gather`` is the process group's (``dist.gather_object``)."""
from __future__ import annotations

import logging
from typing import Callable, Iterable

import numpy as np
from tqdm import tqdm

from ..image_conversion import ImageConversionError
from ..method.localizer import Localizer, image_size
from .keypoints import describe
from .records import Place, check_place
from .sources import Frame

__all__ = ["add_frames_sharded"]

log = logging.getLogger(__name__)


def _embed_share(localizer: Localizer, block: list[tuple[int, Frame]], rank: int, world: int) -> list[tuple]:
    """This rank's frames of ``block``: (index, place, global, local grid, image, keypoints) or (index, None,
    reason); each rank describes its own frames for the keypoint layer (18 KB a frame, not the image)."""
    mine, out = [], []
    for index, frame in block:
        if index % world != rank:
            continue
        place = Place(-1, frame.source, frame.timestamp_ns, frame.pose, frame.utm)
        try:
            check_place(place)
            image = frame.load()
        except (ImageConversionError, FileNotFoundError, ValueError) as exc:
            out.append((index, None, f"skipped {frame.source}: {exc}"))
            continue
        place.image_size = image_size(image)
        mine.append((index, place, image))
    if mine:
        local, global_ = localizer.embed([image for _, _, image in mine])
        grids = local.half().cpu().numpy()
        out += [(index, place, global_[j], grids[j], image if rank == 0 else None,  # rank 0's images: the preview
                 describe(image)) for j, (index, place, image) in enumerate(mine)]
    return out


def add_frames_sharded(localizer: Localizer, frames: Iterable[Frame], gather: Callable[[list], list | None],
                       rank: int, world: int, batch_size: int = 16, total: int | None = None) -> list[int]:
    """Embed this rank's share of ``frames``; on rank 0 add everyone's in frame order (skipped frames
    logged and counted, as ``add_frames`` does) and return the new place ids (other ranks: [])."""
    ids: list[int] = []
    skipped = 0
    database = localizer.database
    block: list[tuple[int, Frame]] = []
    bar = tqdm(total=total, desc=f"embedding (rank {rank} of {world})", unit="img", disable=None)

    def flush():
        nonlocal skipped
        shares = gather(_embed_share(localizer, block, rank, world))
        bar.update(len(block))
        block.clear()
        if shares is None:
            return
        rows = sorted((row for share in shares for row in share), key=lambda row: row[0])
        for row in rows:
            if row[1] is None:
                log.warning("%s", row[2])
                skipped += 1
        kept = [row for row in rows if row[1] is not None]
        if kept:
            images = [r[4] for r in kept if r[4] is not None]
            if database.preview is None and images:
                database.preview = np.ascontiguousarray(max(images, key=lambda im: float(np.std(im))))
            ids.extend(database.add(np.stack([r[2] for r in kept]), np.stack([r[3] for r in kept]),
                                    [r[1] for r in kept], keypoints=[r[5] for r in kept]))

    for index, frame in enumerate(frames):
        block.append((index, frame))
        if len(block) >= batch_size * world:
            flush()
    flush()
    bar.close()
    if skipped:
        log.warning("%d frames were skipped (see above); %d added", skipped, len(ids))
    return ids
