# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""dhe_vpr_ros: visual place recognition with Deep Homography Estimation re-ranking, for ROS 2.

Subpackages by concern, each importing only those before it: ``method`` (networks, matching,
re-ranking, the Localizer), ``map`` (the map database and building it), ``loop`` (loop-closure
policy and its evaluation), ``runtime`` (threads, device, model loading, onnxruntime),
``training``, ``ros`` (the node: the only importer of rclpy) and ``commands`` (the command line).
"""
from pathlib import Path

__version__ = "0.2.0"
DATA_DIR = Path(__file__).resolve().parent / "data"  # the shipped model and the demo's photos

__all__ = ["DATA_DIR", "__version__"]
