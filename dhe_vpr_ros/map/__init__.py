# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The map: a directory of places (FAISS global index, local grids, records, static-cell mask, each
place's ORB keypoints), written atomically under a writer lock, and built from image folders, geo
splits or rosbag2."""
from .building import add_frames, mask_settings, open_for_writing
from .database import MapDatabase
from .format import MapError, is_map
from .keypoints import Keypoints, describe
from .records import Place, Pose
from .sources import Frame, bag_frames, folder_frames, geo_split
from .static_mask import MaskSettings

__all__ = ["Frame", "Keypoints", "MapDatabase", "MapError", "MaskSettings", "Place", "Pose", "add_frames", "bag_frames",
           "describe", "folder_frames", "geo_split", "is_map", "mask_settings", "open_for_writing"]
