# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""ROS 2: the lifecycle node (a thin shell over ``loop`` and ``method``), its parameter table,
its messages and diagnostics, the debug image and the demo's client. The only rclpy importer.

Names are imported when first used: the parameter table and the debug image need no rclpy, so
the commands read the parameters on a machine without ROS (``python -m dhe_vpr_ros.ros.parameters``
prints config/vpr.yaml).
"""
import importlib

__all__ = ["LIVE", "MATCH_LAYOUT", "PARAMETERS", "ParameterProblem", "VprNode", "config_yaml", "draw_match", "main"]

_LAZY = {"LIVE": "parameters", "MATCH_LAYOUT": "messages", "PARAMETERS": "parameters",
         "ParameterProblem": "parameters", "VprNode": "node", "config_yaml": "parameters",
         "draw_match": "debug_image", "main": "process"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
