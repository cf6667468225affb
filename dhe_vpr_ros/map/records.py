# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""A map place's record: where (pose, UTM), when (stamp) and from what (source, image size)."""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..json_fields import field, numbers

__all__ = ["Place", "Pose", "check_place"]


@dataclass(frozen=True)
class Pose:
    """Where a place was seen from: ``position`` (x, y, z) in metres, ``orientation`` as a
    quaternion (x, y, z, w), in ``frame_id``."""

    frame_id: str
    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)

    def to_dict(self) -> dict:
        return {"frame_id": self.frame_id, "position": list(self.position), "orientation": list(self.orientation)}

    @classmethod
    def from_dict(cls, data) -> "Pose":
        if not isinstance(data, dict):
            raise ValueError(f"field 'pose' is {data!r}, not an object")
        return cls(field(data, "frame_id", str), numbers(data, "position", 3, optional=False),
                   numbers(data, "orientation", 4, optional=False))


@dataclass
class Place:
    """Metadata of one map place. ``image_size``: (width, height) of the original image, so
    homographies come out in its pixels."""

    place_id: int
    source: str = ""
    timestamp_ns: int | None = None
    pose: Pose | None = None
    utm: tuple[float, float] | None = None
    image_size: tuple[int, int] | None = None

    def to_dict(self) -> dict:
        return {"place_id": self.place_id, "source": self.source, "timestamp_ns": self.timestamp_ns,
                "pose": self.pose.to_dict() if self.pose is not None else None,
                "utm": list(self.utm) if self.utm is not None else None,
                "image_size": list(self.image_size) if self.image_size is not None else None}

    @classmethod
    def from_dict(cls, data) -> "Place":
        """ValueError naming the field for anything that is not a place record."""
        if not isinstance(data, dict):
            raise ValueError(f"is {type(data).__name__}, not an object")
        size = numbers(data, "image_size", 2, kind=int)
        if size is not None and min(size) <= 0:
            raise ValueError(f"field 'image_size' is {list(size)}, not a positive width and height")
        pose = data.get("pose")
        return cls(field(data, "place_id", int), field(data, "source", str, optional=True) or "",
                   field(data, "timestamp_ns", int, optional=True),
                   Pose.from_dict(pose) if pose is not None else None, numbers(data, "utm", 2), size)


def check_place(place: Place) -> None:
    """ValueError naming the field when ``place`` would not be read back (the rules of reading)."""
    Place.from_dict(json.loads(json.dumps(place.to_dict())))
