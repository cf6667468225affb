"""The ROS 2 node: camera images in, place matches and loop closures out.

A thin adapter over ``Localizer``: subscriptions keep only the newest frame per topic (a
one-slot buffer; replaced frames are counted as dropped), a worker thread does inference, and
results are published stamped with the query image's header. See README "Topics" for every
message layout.
"""
from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

import rclpy
import rclpy.executors
import rclpy.logging
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseWithCovarianceStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64MultiArray, MultiArrayDimension
from std_srvs.srv import Trigger

from .debug_image import draw_match
from .image_conversion import ImageConversionError, rgb_to_fields, to_rgb

# name -> (default, description); config/vpr.yaml lists the same, a test keeps them equal
PARAMETERS = {
    "map_path": ("", "map directory from build-map; empty: start with an empty map (needs add_keyframes)"),
    "checkpoint": ("", "model checkpoint; empty: the shipped default model"),
    "backbone": ("", "backbone when no checkpoint is given (efficientnet_lite0 | cct14); empty: the default"),
    "device": ("cpu", "cpu, cuda or cuda:N; cuda without a GPU falls back to cpu with a warning"),
    "image_topics": (["image"], "camera topics; a name ending in /compressed is a CompressedImage topic"),
    "image_qos_reliability": ("best_effort", "best_effort or reliable, for the image subscriptions"),
    "top_k": (16, "candidates retrieved by global descriptor and re-ranked"),
    "reranker": ("dhe", "dhe | ransac | none"),
    "min_score": (20.0, "minimum re-ranking score (inlier matches) for loop_closure and matched_pose"),
    "min_time_gap_sec": (30.0, "ignore map places closer in time than this to the query"),
    "publish_debug_image": (False, "publish ~/debug_image (query beside match, inliers, outline)"),
    "max_rate_hz": (0.0, "process at most this many frames per second (0: as fast as possible)"),
    "add_keyframes": (False, "grow the map online with processed frames (loop closure within a run)"),
    "keyframe_min_interval_sec": (1.0, "minimum stamp interval between inserted keyframes"),
    "max_places": (100000, "stop inserting keyframes beyond this many places (bounds memory)"),
    "save_map_path": ("", "write the (grown) map here on shutdown and on ~/save_map"),
    "matched_pose_variance": (1.0, "diagonal of ~/matched_pose covariance (m^2, rad^2)"),
    "diagnostics_period_sec": (1.0, "period of /diagnostics"),
}


# ~/match: the 14 values the issue lists, then 3 that make the homography usable on its own
MATCH_LAYOUT = ("query_stamp_sec,place_id,score,global_similarity,map_stamp_sec,h00,h01,h02,h10,h11,h12,"
                "h20,h21,h22,map_image_width,map_image_height,latency_ms")


class StartupError(RuntimeError):
    """A parameter or file problem that stops the node before it runs."""


@dataclass
class _Pending:
    msg: object
    topic: str
    received: float


def stamp_sec(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def _dims(*pairs) -> list[MultiArrayDimension]:
    """Labelled MultiArray dims from (label, size) pairs; strides as in the message docs."""
    dims, stride = [], 1
    for _, size in pairs:
        stride *= size
    for label, size in pairs:
        dims.append(MultiArrayDimension(label=label, size=size, stride=stride))
        stride //= max(size, 1)
    return dims


class VprNode(Node):
    def __init__(self, **kwargs):
        super().__init__("vpr_node", **kwargs)
        for name, (default, description) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=description))
        p = {name: self.get_parameter(name).value for name in PARAMETERS}
        self.p = p
        self._setup_core(p)
        self._lock = threading.Lock()  # the map: worker adds, service saves
        self._wake = threading.Condition()
        self._slots: dict[str, _Pending] = {}
        self._stop = False
        self.stats = {"received": 0, "processed": 0, "dropped": 0, "bad": 0, "keyframes": 0}
        self._latencies: deque = deque(maxlen=200)
        self._rate_window: deque = deque(maxlen=400)
        self._last_warn: dict[str, float] = {}
        self._last_error = ""
        self._last_keyframe_ns: int | None = None
        self._last_processed = 0.0

        reliability = str(p["image_qos_reliability"]).lower()
        if reliability not in ("best_effort", "reliable"):
            raise StartupError(f"image_qos_reliability must be best_effort or reliable, not {reliability!r}")
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort"
                         else ReliabilityPolicy.RELIABLE)
        topics = list(p["image_topics"])
        if not topics:
            raise StartupError("image_topics is empty; give at least one camera topic")
        for topic in topics:
            kind = CompressedImage if topic.rstrip("/").endswith("/compressed") else Image
            self.create_subscription(kind, topic, lambda msg, t=topic: self._on_image(msg, t), qos)
        self.pub_match = self.create_publisher(Float64MultiArray, "~/match", 10)
        self.pub_top_k = self.create_publisher(Float64MultiArray, "~/top_k", 10)
        self.pub_pose = self.create_publisher(PoseWithCovarianceStamped, "~/matched_pose", 10)
        self.pub_loop = self.create_publisher(Float64MultiArray, "~/loop_closure", 10)
        self.pub_debug = self.create_publisher(Image, "~/debug_image", 1) if p["publish_debug_image"] else None
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(Trigger, "~/save_map", self._on_save_map)
        self.create_timer(float(p["diagnostics_period_sec"]), self._publish_diagnostics)
        self._worker = threading.Thread(target=self._work, name="vpr_inference", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"ready: {len(self.localizer.database)} map places, backbone {self.model.backbone.name}, "
            f"re-ranker {p['reranker']}, device {self.device}, topics {topics}")

    # -- setup ---------------------------------------------------------------------------
    def _setup_core(self, p: dict) -> None:
        from .localizer import Localizer, model_identity
        from .mapdb import MapDatabase, MapError
        from .models import CheckpointError
        from .rerank import RERANKERS
        from .runtime import load_model, resolve_device
        if p["reranker"] not in RERANKERS:
            raise StartupError(f"reranker {p['reranker']!r} is not one of {', '.join(RERANKERS)}")
        if int(p["top_k"]) < 1:
            raise StartupError(f"top_k must be at least 1, not {p['top_k']}")
        if not p["map_path"] and not p["add_keyframes"]:
            raise StartupError("map_path is empty and add_keyframes is false: nothing to match against; "
                               "give a map from build-map or enable add_keyframes")
        if p["map_path"] and not os.path.isdir(p["map_path"]):
            raise StartupError(f"map_path {p['map_path']!r} does not exist (build one with "
                               "`ros2 run dhe_vpr_ros build_map`)")
        logger = _LoggerAdapter(self.get_logger())
        try:
            self.device = resolve_device(p["device"], logger)
            self.model, build_info = load_model(p["checkpoint"] or None, p["backbone"] or None, self.device, logger)
            identity = model_identity(self.model)
            database = (MapDatabase.open(p["map_path"], expect=identity) if p["map_path"]
                        else MapDatabase(identity, build_info=build_info))
        except (CheckpointError, MapError, ValueError, FileNotFoundError) as exc:
            raise StartupError(str(exc)) from exc
        self.localizer = Localizer(self.model, database, self.device, p["reranker"], int(p["top_k"]))
        self._stamps = database.timestamps_ns()

    # -- input ---------------------------------------------------------------------------
    def _on_image(self, msg, topic: str) -> None:
        with self._wake:
            self.stats["received"] += 1
            self._rate_window.append(("in", time.monotonic()))
            if topic in self._slots:
                self.stats["dropped"] += 1  # an older frame was never processed
            self._slots[topic] = _Pending(msg, topic, time.monotonic())
            self._wake.notify()

    def _take(self) -> _Pending | None:
        with self._wake:
            while not self._slots and not self._stop:
                self._wake.wait(0.5)
            if self._stop:
                return None
            topic = min(self._slots, key=lambda t: self._slots[t].received)  # fair across cameras
            return self._slots.pop(topic)

    def _warn_throttled(self, key: str, text: str, period: float = 5.0) -> None:
        now = time.monotonic()
        if now - self._last_warn.get(key, -1e9) >= period:
            self._last_warn[key] = now
            self.get_logger().warning(text)

    # -- inference -----------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._take()
            if item is None:
                return
            if self.p["max_rate_hz"] > 0:
                wait = self._last_processed + 1.0 / self.p["max_rate_hz"] - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            self._last_processed = time.monotonic()
            try:
                image = to_rgb(item.msg)
            except ImageConversionError as exc:
                self.stats["bad"] += 1
                self._last_error = f"{item.topic}: {exc}"
                reason = " ".join(str(exc).split()[:2])  # throttle per topic and kind of problem
                self._warn_throttled(f"bad:{item.topic}:{reason}", f"skipping image on {item.topic}: {exc}")
                continue
            try:
                self._process(image, item)
            except Exception as exc:  # keep the node alive; the reason goes to the log and diagnostics
                self._last_error = f"{type(exc).__name__}: {exc}"
                self._warn_throttled("process", f"processing a frame from {item.topic} failed: {self._last_error}")

    def _process(self, image: np.ndarray, item: _Pending) -> None:
        header = item.msg.header
        q_ns = stamp_ns(header.stamp)
        loc = self.localizer
        local, global_ = loc.embed([image])
        with self._lock:
            exclude = None
            gap_ns = self.p["min_time_gap_sec"] * 1e9
            if len(self._stamps) and gap_ns > 0:
                known = self._stamps >= 0
                exclude = np.flatnonzero(known & (np.abs(self._stamps - q_ns) < gap_ns))
            result = loc.rank(local[0], global_[0], (image.shape[1], image.shape[0]), exclude_ids=exclude)
            if self.p["add_keyframes"]:
                self._maybe_add_keyframe(local, global_, image, item.topic, q_ns)
        self.stats["processed"] += 1
        self._rate_window.append(("out", time.monotonic()))
        latency_ms = (time.monotonic() - item.received) * 1e3
        self._latencies.append(latency_ms)
        if result.best is not None:
            self._publish(result, header, image, latency_ms)

    def _maybe_add_keyframe(self, local, global_, image, topic: str, q_ns: int) -> None:
        from .mapdb import Place
        interval_ns = self.p["keyframe_min_interval_sec"] * 1e9
        if self._last_keyframe_ns is not None and q_ns - self._last_keyframe_ns < interval_ns:
            return
        db = self.localizer.database
        if len(db) >= self.p["max_places"]:
            self._warn_throttled("full", f"map holds max_places={self.p['max_places']} places; "
                                 "no more keyframes are inserted", 60.0)
            return
        place = Place(-1, topic, q_ns, image_size=(image.shape[1], image.shape[0]))
        db.add(global_, local.half().cpu().numpy(), [place])
        self._stamps = np.append(self._stamps, q_ns)
        self._last_keyframe_ns = q_ns
        self.stats["keyframes"] += 1

    # -- output --------------------------------------------------------------------------
    def _publish(self, result, header, image, latency_ms: float) -> None:
        best = result.best
        q_sec = stamp_sec(header.stamp)
        map_sec = best.place.timestamp_ns / 1e9 if best.place.timestamp_ns is not None else math.nan
        match = Float64MultiArray()
        match.layout.dim = _dims((MATCH_LAYOUT, 17))
        map_w, map_h = best.place.image_size or (math.nan, math.nan)
        match.data = [q_sec, float(best.place_id), best.score, best.global_similarity, map_sec,
                      *[float(v) for v in best.homography.reshape(-1)],
                      float(map_w), float(map_h), latency_ms]
        self.pub_match.publish(match)
        top = Float64MultiArray()
        rows = result.candidates
        top.layout.dim = _dims(("candidates", len(rows)), ("place_id,score,global_similarity,map_stamp_sec", 4))
        top.data = [v for c in rows for v in (float(c.place_id), c.score, c.global_similarity,
                                              c.place.timestamp_ns / 1e9 if c.place.timestamp_ns is not None
                                              else math.nan)]
        self.pub_top_k.publish(top)
        accepted = best.score >= self.p["min_score"]
        if accepted and best.place.pose:
            self.pub_pose.publish(self._pose_msg(best.place.pose, header))
        if accepted and not math.isnan(map_sec):
            loop = Float64MultiArray()
            loop.data = [q_sec, map_sec]  # exactly 2 values: what LIO-SAM reads
            self.pub_loop.publish(loop)
        if self.pub_debug is not None:
            self._publish_debug(result, header, image)

    def _pose_msg(self, pose: dict, header) -> PoseWithCovarianceStamped:
        msg = PoseWithCovarianceStamped()
        msg.header.stamp = header.stamp
        msg.header.frame_id = pose.get("frame_id", "map")
        (msg.pose.pose.position.x, msg.pose.pose.position.y, msg.pose.pose.position.z) = pose["position"]
        (msg.pose.pose.orientation.x, msg.pose.pose.orientation.y, msg.pose.pose.orientation.z,
         msg.pose.pose.orientation.w) = pose["orientation"]
        var = float(self.p["matched_pose_variance"])
        msg.pose.covariance = [var if i % 7 == 0 else 0.0 for i in range(36)]
        return msg

    def _publish_debug(self, result, header, image) -> None:
        picture = draw_match(image, result.best, result.inliers)
        self.pub_debug.publish(Image(header=header, **rgb_to_fields(picture, "rgb8")))

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        with self._wake:
            recent = [(kind, t) for kind, t in self._rate_window if now - t <= 5.0]
        span = 5.0
        lat = sorted(self._latencies)

        def pct(q):
            return lat[min(len(lat) - 1, int(q * (len(lat) - 1)))] if lat else math.nan

        status = DiagnosticStatus(name="vpr_node: place recognition", hardware_id=str(self.device))
        status.level = DiagnosticStatus.OK
        status.message = "ok"
        if self.stats["bad"]:
            status.level, status.message = DiagnosticStatus.WARN, f"bad input messages: {self.stats['bad']}"
        values = {
            "input_rate_hz": sum(1 for k, _ in recent if k == "in") / span,
            "processed_rate_hz": sum(1 for k, _ in recent if k == "out") / span,
            "frames_received": self.stats["received"], "frames_processed": self.stats["processed"],
            "frames_dropped": self.stats["dropped"], "bad_messages": self.stats["bad"],
            "latency_ms_p50": pct(0.5), "latency_ms_p95": pct(0.95),
            "map_places": len(self.localizer.database), "keyframes_added": self.stats["keyframes"],
            "device": str(self.device), "reranker": self.p["reranker"], "last_error": self._last_error,
        }
        status.values = [KeyValue(key=k, value=f"{v:.2f}" if isinstance(v, float) else str(v))
                         for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(array)

    # -- map saving ----------------------------------------------------------------------
    def save_map(self) -> str:
        path = self.p["save_map_path"]
        if not path:
            raise ValueError("save_map_path is not set")
        with self._lock:
            self.localizer.database.save(path)
            count = len(self.localizer.database)
        return f"saved {count} places to {path}"

    def _on_save_map(self, request, response):
        try:
            response.message = self.save_map()
            response.success = True
            self.get_logger().info(response.message)
        except Exception as exc:
            response.success, response.message = False, f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"~/save_map failed: {response.message}")
        return response

    def shutdown(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        self._worker.join(timeout=30)
        if self.p["save_map_path"]:
            try:
                self.get_logger().info(self.save_map())
            except Exception as exc:
                self.get_logger().error(f"saving the map on shutdown failed: {exc}")


class _LoggerAdapter:
    """Lets the ROS-free core log through the node's ROS logger."""

    def __init__(self, logger):
        self._logger = logger

    def _fmt(self, msg, args):
        return msg % args if args else msg

    def info(self, msg, *args):
        self._logger.info(self._fmt(msg, args))

    def warning(self, msg, *args):
        self._logger.warning(self._fmt(msg, args))

    def error(self, msg, *args):
        self._logger.error(self._fmt(msg, args))


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    try:
        node = VprNode()
    except StartupError as exc:
        rclpy.logging.get_logger("vpr_node").fatal(f"cannot start: {exc}")
        rclpy.try_shutdown()
        return 1
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        node.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
