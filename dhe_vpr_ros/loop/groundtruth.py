# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Labelled runs: query frames in order, the map frames they are measured against, and which
map places are right for each query.

Two sources, as ``evaluate`` and ``calibrate`` take them:

* a geo-localisation split (``DIR/database``, ``DIR/queries``, UTM in the file names): a map
  place is right when it lies within ``positive_m`` metres of the query;
* two image folders of the same route, a reference run and a query run, each in file-name
  order with one frame per place: query frame i is right at map places i - tolerance ..
  i + tolerance (the datasets' usual +-2 frame ground truth). ``frame_indexed`` runs also
  tell how far off a wrong answer is, in frames.

Queries come in file-name order (the order a robot saw them when the names are sequence
numbers or stamps); the map's places are its ids, in the order the reference frames were added.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..map.sources import Frame, folder_frames, geo_split

__all__ = ["GroundTruthError", "LabelledRun", "check_sequence_order", "folder_pair", "geo_run"]


class GroundTruthError(ValueError):
    """The inputs do not make a labelled run (no ground truth, mismatched folders, too few frames)."""


@dataclass
class LabelledRun:
    """``positives[q]``: the map place ids that are right for query ``q``; ``tolerance``: frames
    (frame-indexed runs) or None (geo runs, where positives come from metres)."""

    description: str
    queries: list[Frame]
    references: list[Frame]
    positives: list[np.ndarray] | None = None  # geo runs: filled in once the map's UTM is known
    tolerance: int | None = None
    positive_m: float | None = None

    @property
    def frame_indexed(self) -> bool:
        return self.tolerance is not None

    def place_error(self, query: int, place_id: int) -> int | None:
        """How many frames ``place_id`` lies from query ``query``'s own place (frame-indexed runs)."""
        return abs(int(place_id) - query) if self.frame_indexed else None

    def label_with_map(self, places) -> None:
        """Geo runs: positives from the map places' UTM (the map may be prebuilt)."""
        if self.frame_indexed:
            if len(places) != len(self.references):
                raise GroundTruthError(f"the map has {len(places)} places but the reference run has "
                                       f"{len(self.references)} frames: frame-indexed ground truth needs a map "
                                       "built from exactly the reference frames, in order")
            return
        if any(p.utm is None for p in places):
            raise GroundTruthError("the map has places without UTM coordinates; a geo-localisation ground truth "
                                   "needs a map built from a geo split (build-map --geo-split)")
        map_utm = np.array([p.utm for p in places], dtype=np.float64).reshape(-1, 2)
        query_utm = np.array([q.utm for q in self.queries], dtype=np.float64).reshape(-1, 2)
        dist = np.linalg.norm(query_utm[:, None, :] - map_utm[None, :, :], axis=-1)
        self.positives = [np.flatnonzero(row <= self.positive_m) for row in dist]


def geo_run(directory: str | Path, positive_m: float = 25.0) -> LabelledRun:
    """A geo-localisation split; positives are set by ``label_with_map``."""
    if not positive_m > 0:
        raise GroundTruthError(f"the positive distance must be above 0 m, not {positive_m}")
    queries = folder_frames(geo_split(directory, "queries"), with_utm=True)
    references = folder_frames(geo_split(directory, "database"), with_utm=True)
    return LabelledRun(f"geo split {directory}", queries, references, positive_m=positive_m)


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def check_sequence_order(sources: list[str], folder) -> None:
    """GroundTruthError when the file names sort differently as text and as numbers (1, 10, 2):
    the run's order would be scrambled."""
    names = [str(Path(s).relative_to(folder)) if Path(s).is_relative_to(folder) else Path(s).name for s in sources]
    natural = sorted(names, key=_natural_key)
    if natural != names:
        first = next(i for i, (a, b) in enumerate(zip(names, natural)) if a != b)
        raise GroundTruthError(f"the image names in {folder} are not in sequence order as text: {names[first]!r} "
                               f"sorts before {natural[first]!r}; zero-pad the frame numbers (e.g. 0002.png)")


def folder_pair(reference: str | Path, queries: str | Path, tolerance: int = 2) -> LabelledRun:
    """A reference run and a query run of one route, frame i of each at the same place."""
    if tolerance < 0:
        raise GroundTruthError(f"the frame tolerance must be 0 or more, not {tolerance}")
    refs, qs = folder_frames(reference), folder_frames(queries)
    for frames, folder in ((refs, reference), (qs, queries)):
        check_sequence_order([f.source for f in frames], folder)
    if len(refs) != len(qs):
        raise GroundTruthError(f"{reference} has {len(refs)} images and {queries} has {len(qs)}: frame-indexed "
                               "ground truth needs one query frame per reference frame, in the same order")
    if len(qs) < 2:
        raise GroundTruthError(f"{queries} has {len(qs)} image: a run needs at least 2 frames")
    positives = [np.arange(max(0, i - tolerance), min(len(refs), i + tolerance + 1)) for i in range(len(qs))]
    return LabelledRun(f"{queries} against {reference} (+-{tolerance} frames)", qs, refs, positives, tolerance)
