# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The node's output messages, built from a ``Recognition``: their layouts and QoS.

``~/match`` is a Float64MultiArray whose values ``MATCH_LAYOUT`` names (its dim label carries
the same string); ``~/top_k`` is (candidates x 4); ``~/loop_closure`` is LIO-SAM's
``[query_stamp_sec, map_stamp_sec]``; ``~/matched_pose`` a PoseWithCovarianceStamped whose
covariance widens as the evidence weakens.
"""
from __future__ import annotations

import math

from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from std_msgs.msg import Float64MultiArray, MultiArrayDimension

__all__ = ["DEBUG_QOS", "MATCH_LAYOUT", "MATCH_SIZE", "RESULTS_QOS", "image_qos", "match_message", "pose_message",
           "stamp_ns", "stamp_sec", "top_k_message"]

# ~/match: the 14 values the issue lists, 3 that make the homography usable on its own, then the
# sequence verification of the frame and the two-view check's inliers (-1: not checked; appended:
# what came before never moves)
MATCH_LAYOUT = ("query_stamp_sec,place_id,score,global_similarity,map_stamp_sec,h00,h01,h02,h10,h11,h12,"
                "h20,h21,h22,map_image_width,map_image_height,latency_ms,"
                "verified,sequence_place_id,sequence_score,sequence_agreeing,distinctiveness,two_view_inliers")
MATCH_SIZE = MATCH_LAYOUT.count(",") + 1
RESULTS_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)  # every output but debug
DEBUG_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)  # large: keep one


def stamp_sec(stamp) -> float:
    """A header stamp in seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def stamp_ns(stamp) -> int:
    """A header stamp in nanoseconds."""
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def dims(*pairs) -> list[MultiArrayDimension]:
    """Labelled MultiArray dims from (label, size) pairs; strides as in the message docs."""
    dims, stride = [], 1
    for _, size in pairs:
        stride *= size
    for label, size in pairs:
        dims.append(MultiArrayDimension(label=label, size=size, stride=stride))
        stride //= max(size, 1)
    return dims


def image_qos(reliability: str) -> QoSProfile:
    """rclpy's sensor-data profile (best effort, depth 5), reliability selectable."""
    qos = QoSProfile(**{k: getattr(qos_profile_sensor_data, k) for k in ("history", "depth", "durability")})
    qos.reliability = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return qos


def match_message(recognition, query_sec: float, latency_ms: float) -> Float64MultiArray:
    """``~/match``: the best candidate, its homography, and the sequence verification's verdict."""
    best, verdict = recognition.best, recognition.verdict
    map_sec = best.place.timestamp_ns / 1e9 if best.place.timestamp_ns is not None else math.nan
    map_w, map_h = best.place.image_size or (math.nan, math.nan)
    match = Float64MultiArray()
    match.layout.dim = dims((MATCH_LAYOUT, MATCH_SIZE))
    match.data = [query_sec, float(best.place_id), best.score, best.global_similarity, map_sec,
                  *[float(v) for v in best.homography.reshape(-1)], float(map_w), float(map_h), latency_ms,
                  float(recognition.accepted), float(verdict.place_id), verdict.score, float(verdict.agreeing),
                  verdict.distinctiveness,
                  float(-1 if recognition.two_view_inliers is None else recognition.two_view_inliers)]
    return match


def top_k_message(candidates) -> Float64MultiArray:
    """``~/top_k``: place id, score, global similarity and map stamp of every re-ranked candidate."""
    top = Float64MultiArray()
    top.layout.dim = dims(("candidates", len(candidates)), ("place_id,score,global_similarity,map_stamp_sec", 4))
    top.data = [v for c in candidates
                for v in (float(c.place_id), c.score, c.global_similarity,
                          c.place.timestamp_ns / 1e9 if c.place.timestamp_ns is not None else math.nan)]
    return top


def pose_message(pose, header, variance: float) -> PoseWithCovarianceStamped:
    """``~/matched_pose``: the verified place's pose, ``variance`` on the covariance's diagonal."""
    msg = PoseWithCovarianceStamped()
    msg.header.stamp = header.stamp
    msg.header.frame_id = pose.frame_id or "map"
    p, o = msg.pose.pose.position, msg.pose.pose.orientation
    p.x, p.y, p.z = (float(v) for v in pose.position)
    o.x, o.y, o.z, o.w = (float(v) for v in pose.orientation)
    msg.pose.covariance = [variance if i % 7 == 0 else 0.0 for i in range(36)]
    return msg
