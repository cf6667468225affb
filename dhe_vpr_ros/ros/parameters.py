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
from pathlib import Path

from ..image_conversion import MAX_PIXELS
from ..loop.policy import AUTO, CALIBRATED_MIN_SCORE, MAX_GUIDED, VERIFY_FEATURES, LoopPolicy
from ..loop.sequence import SequenceSettings
from ..map.format import is_map
from ..method.rerank import DEFAULT_REFINE_ROUNDS, DEFAULT_REGRESSED, MAX_REFINE_ROUNDS, RERANKERS
from ..runtime.loading import PRECISIONS, RUNTIMES

__all__ = ["LIVE", "PARAMETERS", "ParamSpec", "ParameterProblem", "check_live", "check_startup", "config_yaml",
           "descriptor"]


class ParameterProblem(ValueError):
    """A parameter value the node cannot work with; the message says which and why."""


@dataclass(frozen=True)
class ParamSpec:
    default: object
    description: str
    live: bool = False  # may change while the node runs (validated by the on-set callback)
    bounds: tuple | None = None  # (low, high) inclusive, for numbers


_POLICY = LoopPolicy()  # the policy's defaults are the node's
_LIMITS = SequenceSettings.LIMITS

PARAMETERS: dict[str, ParamSpec] = {
    "autostart": ParamSpec(True, "configure and activate at start; false: wait for a lifecycle manager"),
    "map_path": ParamSpec("", "map directory from build-map; empty: start with an empty map (needs add_keyframes)"),
    "checkpoint": ParamSpec("", "model checkpoint; empty: the shipped default model"),
    "backbone": ParamSpec("", "backbone when no checkpoint is given (efficientnet_lite0 | cct14); empty: the default"),
    "device": ParamSpec("cpu", "cpu, cuda or cuda:N; cuda without a GPU falls back to cpu with a warning"),
    "runtime": ParamSpec("auto", "auto: the checkpoint's export in onnxruntime when `export` wrote one, else PyTorch; "
                                 "torch; or onnxruntime: the exported files in onnx_dir (CUDA / TensorRT providers "
                                 "where installed)"),
    "onnx_dir": ParamSpec("", "with runtime onnxruntime (or auto): the folder `export --out` wrote"),
    "precision": ParamSpec("float", "float, or int8: the int8 backbone `export --int8` wrote, in onnxruntime (a map "
                                    "built with one is queried with the same); set while unconfigured, refused live",
                           True),
    "threads": ParamSpec(0, "CPU threads for the network (0: the cores free beside the node, followed while it "
                            "runs, at most 4); OpenCV and FAISS use one", False, (0, 256)),
    "image_topics": ParamSpec(["image"], "camera topics; a name ending in /compressed is a CompressedImage topic"),
    "image_qos_reliability": ParamSpec("best_effort", "best_effort (sensor data QoS) or reliable, for the images"),
    "max_image_pixels": ParamSpec(MAX_PIXELS, "larger frames are bad messages, refused before they are decoded "
                                              "(a compressed frame's size is read from its header)", True,
                                  (1024, 1_000_000_000)),
    "top_k": ParamSpec(16, "candidates retrieved by global descriptor and re-ranked", True, (1, 1000)),
    "reranker": ParamSpec("dhe", " | ".join(RERANKERS), True),
    "refine_rounds": ParamSpec(DEFAULT_REFINE_ROUNDS, "dhe: rounds of refitting the homography to its inlier "
                                                      "matches (0: the regressed homography)", True,
                               (0, MAX_REFINE_ROUNDS)),
    "regressor_candidates": ParamSpec(DEFAULT_REGRESSED, "dhe: candidates the homography regressor runs on, the "
                                                         "ones the matches' shift start scores best; the others keep "
                                                         "that start (0: every candidate)", True, (0, 1000)),
    "min_score": ParamSpec(AUTO, "sequence score a loop closure (and matched_pose) needs; -1: the calibrated "
                                 "default of the active re-ranker (" + ", ".join(
                                     f"{k} {v:g}" for k, v in CALIBRATED_MIN_SCORE.items()) + ")",
                           True, (AUTO, 1e6)),
    "sequence_length": ParamSpec(_POLICY.sequence_length, "frames whose matches must agree before a loop closure "
                                 "(the current one included; 1: single-frame score only)", True,
                                 _LIMITS["length"]),
    "sequence_tolerance": ParamSpec(_POLICY.sequence_tolerance, "places a frame's match may lie off the "
                                    "sequence's line and still support it", True, _LIMITS["tolerance"]),
    "sequence_max_speed": ParamSpec(_POLICY.sequence_max_speed, "fastest the robot may move along the map, in "
                                    "places per processed frame, either direction (0: standing still only)", True,
                                    _LIMITS["max_speed"]),
    "sequence_min_agreeing": ParamSpec(_POLICY.sequence_min_agreeing, "frames of the window whose first-ranked "
                                       "place must lie on the sequence's line (at most sequence_length)", True,
                                       _LIMITS["min_agreeing"]),
    "min_distinctiveness": ParamSpec(_POLICY.min_distinctiveness, "the verified place's sequence score over the "
                                     "best one outside its neighbourhood (1: off; near 1 is aliasing)", True,
                                     _LIMITS["min_distinctiveness"]),
    "distinctiveness_neighbourhood": ParamSpec(_POLICY.distinctiveness_neighbourhood, "places on either side of "
                                               "the verified one that are not its rivals", True,
                                               _LIMITS["neighbourhood"]),
    "sequence_guided": ParamSpec(_POLICY.sequence_guided, "places the strongest sequence lines predict for the "
                                 "next frame, re-ranked with its candidates when retrieval missed them (0: off)",
                                 True, (0, MAX_GUIDED)),
    "verify_min_inliers": ParamSpec(_POLICY.verify_min_inliers, "two-view check of the place about to be published: "
                                    "ORB matches consistent with one fundamental matrix it needs (0: off; maps "
                                    "built before the keypoint layer skip it, said once)", True, (0, 100000)),
    "verify_features": ParamSpec(_POLICY.verify_features, "ORB features detected in a frame for the two-view check "
                                 "(the map keeps up to 500 a place)", True, VERIFY_FEATURES),
    "min_time_gap_sec": ParamSpec(_POLICY.min_time_gap_sec, "ignore map places closer in time than this to the "
                                                            "query", True, (0.0, 1e9)),
    "publish_debug_image": ParamSpec(False, "publish ~/debug_image (query beside match, inliers, outline)", True),
    "max_rate_hz": ParamSpec(0.0, "process at most this many frames per second (0: as fast as possible)",
                             True, (0.0, 1000.0)),
    "add_keyframes": ParamSpec(_POLICY.add_keyframes, "grow the map online with processed frames (loop closure "
                                                      "within a run)", True),
    "keyframe_min_interval_sec": ParamSpec(_POLICY.keyframe_min_interval_sec, "minimum stamp interval between "
                                                                              "inserted keyframes", True, (0.0, 1e6)),
    "max_places": ParamSpec(_POLICY.max_places, "stop inserting keyframes beyond this many places (bounds memory)",
                            False, (1, 100_000_000)),
    "save_map_path": ParamSpec("", "write the (grown) map here on shutdown and on ~/save_map", True),
    "matched_pose_variance": ParamSpec(1.0, "diagonal of ~/matched_pose covariance (m^2, rad^2) for the "
                                            "strongest evidence; it grows as the score and agreement fall", False,
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
    if p["precision"] not in PRECISIONS:
        raise ParameterProblem(f"precision must be {' or '.join(PRECISIONS)}, not {p['precision']!r}")
    if p["reranker"] not in RERANKERS:
        raise ParameterProblem(f"reranker {p['reranker']!r} is not one of {', '.join(RERANKERS)}")
    for name in LIVE:
        _in_range(name, p[name])
    try:
        LoopPolicy.from_mapping(p).sequence().check_work(p["top_k"])
    except ValueError as exc:  # what the ranges cannot say (min_score between -1 and 0, agreeing > length, cost)
        raise ParameterProblem(str(exc)) from None
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
    if p["runtime"] not in RUNTIMES:
        raise ParameterProblem(f"runtime must be {' or '.join(RUNTIMES)}, not {p['runtime']!r}")
    if p["image_qos_reliability"] not in ("best_effort", "reliable"):
        raise ParameterProblem("image_qos_reliability must be best_effort or reliable, "
                               f"not {p['image_qos_reliability']!r}")
    if not p["map_path"] and not p["add_keyframes"]:
        raise ParameterProblem("map_path is empty and add_keyframes is false: nothing to match against; "
                               "give a map from build-map or enable add_keyframes")
    if p["map_path"] and not os.path.isdir(p["map_path"]):
        raise ParameterProblem(f"map_path {p['map_path']!r} does not exist (build one with "
                               "`ros2 run dhe_vpr_ros build_map`)")
    save, source = p["save_map_path"], p["map_path"]
    if save and is_map(Path(save)) and (not source or os.path.realpath(save) != os.path.realpath(source)):
        raise ParameterProblem(f"save_map_path {save!r} holds a map this node would not open (map_path is "
                               f"{source!r}): saving would replace it; set map_path to it to grow that map, or "
                               "choose a new save_map_path")


CONFIG_HEADER = """# dhe_vpr_ros node parameters, every one with its default.
# Use: ros2 launch dhe_vpr_ros vpr.launch.py map_path:=/path/to/map
#  or: ros2 run dhe_vpr_ros vpr_node --ros-args --params-file config/vpr.yaml
# "/**" applies to the node under any name or namespace. (live): may be changed while the node
# runs (ros2 param set); the others are read-only once the node has started.
/**:
  ros__parameters:
"""


def config_yaml() -> str:
    """``config/vpr.yaml``: every parameter with its default, range and description
    (``python -m dhe_vpr_ros.ros.parameters > config/vpr.yaml``; a test keeps the file equal)."""
    import json
    lines = [CONFIG_HEADER.rstrip("\n")]
    for name, spec in PARAMETERS.items():
        notes = f" [{spec.bounds[0]:g} .. {spec.bounds[1]:g}]" if spec.bounds else ""
        lines.append(f"    # {spec.description}{notes}{' (live)' if spec.live else ''}")
        value = json.dumps(spec.default) if not isinstance(spec.default, bool) else str(spec.default).lower()
        lines.append(f"    {name}: {value}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys
    sys.stdout.write(config_yaml())
