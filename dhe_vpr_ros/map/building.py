# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Filling a map: embedding frames in batches (unreadable ones skipped and counted), opening a
map to append to or a new one, and the map's mask settings."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from ..atomic import refuse_link
from ..image_conversion import ImageConversionError
from ..method.identity import model_identity
from ..method.localizer import Localizer
from .codec import DEFAULT_GRIDS, GridCodec
from .database import MapDatabase
from .format import MapError, check_replaceable
from .storage import check_writable
from .records import Place, check_place
from .sources import Frame
from .static_mask import MaskError, MaskSettings, user_mask

__all__ = ["add_frames", "check_new_frames", "mask_settings", "open_for_writing"]

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
                     overwrite: bool = False, index_type: str = "flat", grids: str = DEFAULT_GRIDS) -> MapDatabase:
    """An existing map to append to (checked against the model; it keeps its own grid codec) or
    a new empty one storing its grids as ``grids``; MapError for a target that is not a map, or
    that cannot be written."""
    path = Path(path)
    try:
        refuse_link(path, "a map folder")  # before hours of embedding, not at the save
    except OSError as exc:
        raise MapError(str(exc)) from None
    exists = (path / "manifest.json").exists()
    if exists and append:
        database = MapDatabase.open(path, expect=model_identity(model))
    elif exists and not overwrite:
        raise MapError(f"a map already exists at {path}; pass --append to add to it or "
                       "--overwrite to replace it")
    else:
        database = MapDatabase(model_identity(model), index_type, build_info=dict(build_info), codec=GridCodec(grids))
    target = path.resolve()
    check_replaceable(target)  # before hours of embedding, not at the save
    check_writable(target)
    database.spill_dir = str(target.parent) if target.parent.exists() else None
    return database


def mask_settings(database: MapDatabase, mask: str | None = None, roi=None,
                  static_threshold: float | None = None) -> MaskSettings:
    """The map's mask settings from the options given (a user mask image, ROI margins as
    fractions (left, right, top, bottom), a static threshold), else what the map already has."""
    old = database.mask_settings
    grid = database.identity.local_shape[1:]
    margins = tuple(roi) if roi else (old.roi if mask is None else (0.0, 0.0, 0.0, 0.0))
    frame = database.places[0].image_size if database.places else None
    if mask is None and not roi:
        usable, user_file = old.user_usable, old.user_file
    else:
        usable, user_file = user_mask(grid, mask, margins, frame), mask
    threshold = old.threshold if static_threshold is None else static_threshold
    return MaskSettings(threshold, usable, margins, user_file)


def check_new_frames(database: MapDatabase, first_new: int) -> None:
    """MaskError before a map is written when its places from ``first_new`` on would make it
    meaningless: frames of another shape than those the user's mask was drawn for, or a mask
    (learned and the user's) that leaves too few cells to verify a place."""
    settings = database.mask_settings
    reference = database.places[0].image_size if database.places else None
    if settings.user_usable is not None and reference is not None:
        aspect = reference[0] / reference[1]
        other = [p for p in database.places[first_new:] if p.image_size is not None
                 and abs(p.image_size[0] / p.image_size[1] / aspect - 1) > 0.02]
        if other:
            size = other[0].image_size
            raise MaskError(f"{len(other)} new frames (the first {other[0].source or other[0].place_id}) are "
                            f"{size[0]}x{size[1]}, but this map's mask ({settings.user_file or 'ROI'}) was drawn for "
                            f"{reference[0]}x{reference[1]} frames: a mask does not fit another camera's view; "
                            "build a map of its own for that camera (nothing was written)")
    database.mask.check_workable(settings.threshold)
