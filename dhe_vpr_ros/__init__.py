# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""dhe_vpr_ros: visual place recognition with Deep Homography Estimation re-ranking.

The core (models, geometry, matching, re-ranking, losses) imports without ROS; only
``dhe_vpr_ros.node`` needs rclpy.
"""
from .threads import set_wait_policy

__version__ = "0.2.0"
set_wait_policy()  # before torch and faiss load their OpenMP runtimes (see threads.py)
