# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The node's parameters: defaults, ranges, which can change live, and their checks.

One table (``PARAMETERS``) feeds the node's declarations (with ``IntegerRange`` /
``FloatingPointRange`` descriptors and ``read_only`` for what cannot change live),
``config/vpr.yaml`` (a test keeps them equal) and the README. The checks are plain Python, so
they are tested without ROS.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .rerank import DEFAULT_REFINE_ROUNDS, RERANKERS

__all__ = ["LIVE", "PARAMETERS", "ParamSpec", "ParameterProblem", "check_live", "check_startup", "descriptor"]


class ParameterProblem(ValueError):
    """A parameter value the node cannot work with; the message says which and why."""


@dataclass(frozen=True)
class ParamSpec:
    default: object
    description: str
    live: bool = False  # may change while the node runs (validated by the on-set callback)
    bounds: tuple | None = None  # (low, high) inclusive, for numbers


PARAMETERS: dict[str, ParamSpec] = {
    "autostart": ParamSpec(True, "configure and activate at start; false: wait for a lifecycle manager"),
    "map_path": ParamSpec("", "map directory from build-map; empty: start with an empty map (needs add_keyframes)"),
    "checkpoint": ParamSpec("", "model checkpoint; empty: the shipped default model"),
    "backbone": ParamSpec("", "backbone when no checkpoint is given (efficientnet_lite0 | cct14); empty: the default"),
    "device": ParamSpec("cpu", "cpu, cuda or cuda:N; cuda without a GPU falls back to cpu with a warning"),
    "image_topics": ParamSpec(["image"], "camera topics; a name ending in /compressed is a CompressedImage topic"),
    "image_qos_reliability": ParamSpec("best_effort", "best_effort (sensor data QoS) or reliable, for the images"),
    "top_k": ParamSpec(16, "candidates retrieved by global descriptor and re-ranked", True, (1, 1000)),
    "reranker": ParamSpec("dhe", " | ".join(RERANKERS), True),
    "refine_rounds": ParamSpec(DEFAULT_REFINE_ROUNDS, "dhe: rounds of refitting the homography to its inlier "
                                                      "matches (0: the regressed homography)", True, (0, 20)),
    "min_score": ParamSpec(20.0, "minimum re-ranking score (inlier matches) for loop_closure and matched_pose",
                           True, (0.0, 1e6)),
    "min_time_gap_sec": ParamSpec(30.0, "ignore map places closer in time than this to the query", True, (0.0, 1e9)),
    "publish_debug_image": ParamSpec(False, "publish ~/debug_image (query beside match, inliers, outline)", True),
    "max_rate_hz": ParamSpec(0.0, "process at most this many frames per second (0: as fast as possible)",
                             True, (0.0, 1000.0)),
    "add_keyframes": ParamSpec(False, "grow the map online with processed frames (loop closure within a run)", True),
    "keyframe_min_interval_sec": ParamSpec(1.0, "minimum stamp interval between inserted keyframes", True,
                                           (0.0, 1e6)),
    "max_places": ParamSpec(100000, "stop inserting keyframes beyond this many places (bounds memory)", False,
                            (1, 100_000_000)),
    "save_map_path": ParamSpec("", "write the (grown) map here on shutdown and on ~/save_map", True),
    "matched_pose_variance": ParamSpec(1.0, "diagonal of ~/matched_pose covariance (m^2, rad^2)", False,
                                       (0.0, 1e6)),
    "diagnostics_period_sec": ParamSpec(1.0, "period of /diagnostics", False, (0.05, 3600.0)),
}
LIVE = frozenset(name for name, spec in PARAMETERS.items() if spec.live)


def descriptor(name: str, spec: ParamSpec):
    """The rcl_interfaces ParameterDescriptor of one parameter (description, range, read-only)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
    desc = ParameterDescriptor(description=spec.description, read_only=not spec.live)
    if spec.bounds is not None:
        low, high = spec.bounds
        if isinstance(spec.default, int):
            desc.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=1)]
        else:
            desc.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high), step=0.0)]
    return desc


def _in_range(name: str, value) -> None:
    spec = PARAMETERS[name]
    if spec.bounds is None:
        return
    low, high = spec.bounds
    if isinstance(value, float) and not math.isfinite(value) or not low <= value <= high:
        raise ParameterProblem(f"{name} must be between {low} and {high}, not {value}")


def check_live(p: dict) -> None:
    """What the on-set callback enforces beyond the descriptors (ranges are checked again,
    so that the checks hold without ROS too)."""
    if p["reranker"] not in RERANKERS:
        raise ParameterProblem(f"reranker {p['reranker']!r} is not one of {', '.join(RERANKERS)}")
    for name in LIVE:
        _in_range(name, p[name])
    if p["save_map_path"] and os.path.exists(p["save_map_path"]) and not os.path.isdir(p["save_map_path"]):
        raise ParameterProblem(f"save_map_path {p['save_map_path']!r} is an existing file, not a map directory")


def check_startup(p: dict) -> None:
    """Everything a configure needs before loading anything."""
    check_live(p)
    for name in PARAMETERS.keys() - LIVE:  # check_live did the live ones
        _in_range(name, p[name])
    topics = list(p["image_topics"])
    if not topics or any(not str(t).strip() for t in topics):
        raise ParameterProblem(f"image_topics must list at least one camera topic, without empty names "
                               f"(got {topics})")
    if p["image_qos_reliability"] not in ("best_effort", "reliable"):
        raise ParameterProblem("image_qos_reliability must be best_effort or reliable, "
                               f"not {p['image_qos_reliability']!r}")
    if not p["map_path"] and not p["add_keyframes"]:
        raise ParameterProblem("map_path is empty and add_keyframes is false: nothing to match against; "
                               "give a map from build-map or enable add_keyframes")
    if p["map_path"] and not os.path.isdir(p["map_path"]):
        raise ParameterProblem(f"map_path {p['map_path']!r} does not exist (build one with "
                               "`ros2 run dhe_vpr_ros build_map`)")
