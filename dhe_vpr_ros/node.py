# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The ROS 2 node: camera images in, place matches and loop closures out.

A managed (lifecycle) node and a thin one: it declares parameters, converts messages, calls
the ROS-free ``PlaceRecognizer`` (policy) and publishes. Lifecycle:

* configure: validate parameters, load model and map (``runtime.open_localizer``);
* activate: image subscriptions and a worker thread start, publishers go live;
* deactivate: stop processing (frames waiting are dropped); on a GPU, free its cached memory;
* cleanup: release model and map; shutdown: save the map if ``save_map_path`` is set.

With ``autostart`` (default) the node configures and activates itself; startup errors end
the process with one ``cannot start`` line and a non-zero exit. Subscriptions keep only the
newest frame per topic (``FrameSlots``). See README "The node" for every topic and QoS.
"""
from __future__ import annotations

import math
import re
import signal
import threading
import time
from collections import deque

import numpy as np

import rclpy
import rclpy.logging
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseWithCovarianceStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64MultiArray, MultiArrayDimension
from std_srvs.srv import Trigger

from .debug_image import draw_match
from .image_conversion import ImageConversionError, check_usable, rgb_to_fields, to_rgb
from .node_params import LIVE, PARAMETERS, ParameterProblem, check_live, check_startup, descriptor

__all__ = ["MATCH_LAYOUT", "PARAMETERS", "VprNode", "main"]

# ~/match: the 14 values the issue lists, 3 that make the homography usable on its own, then the
# sequence verification of the frame (appended; the first 17 never move)
MATCH_LAYOUT = ("query_stamp_sec,place_id,score,global_similarity,map_stamp_sec,h00,h01,h02,h10,h11,h12,"
                "h20,h21,h22,map_image_width,map_image_height,latency_ms,"
                "verified,sequence_place_id,sequence_score,sequence_agreeing,distinctiveness")
MATCH_SIZE = MATCH_LAYOUT.count(",") + 1
RESULTS_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)  # every output but debug
DEBUG_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)  # large: keep one


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


def image_qos(reliability: str) -> QoSProfile:
    """rclpy's sensor-data profile (best effort, depth 5), reliability selectable."""
    qos = QoSProfile(**{k: getattr(qos_profile_sensor_data, k) for k in ("history", "depth", "durability")})
    qos.reliability = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return qos


class NodeStats:
    """Counters and windows behind /diagnostics (worker and callbacks update, the timer reads)."""

    def __init__(self):
        self.processed = self.bad = self.errors = self.verified = self.loop_closures = 0
        self.latencies: deque = deque(maxlen=200)
        self.rate_window: deque = deque(maxlen=400)
        self.last_error = ""
        self.last_error_level = DiagnosticStatus.OK

    def rate(self, kind: str, span: float = 5.0) -> float:
        now = time.monotonic()
        return sum(1 for k, t in list(self.rate_window) if k == kind and now - t <= span) / span

    def percentile(self, q: float) -> float:
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(q * (len(lat) - 1)))] if lat else math.nan


class VprNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__("vpr_node", **kwargs)
        for name, spec in PARAMETERS.items():
            self.declare_parameter(name, spec.default, descriptor(name, spec))
        self.p = {name: self.get_parameter(name).value for name in PARAMETERS}
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.recognizer = None
        self.slots = None
        self.stats = NodeStats()
        self._subscriptions_live: list = []
        self._worker: threading.Thread | None = None
        self._last_warn: dict[str, float] = {}
        self._last_processed = 0.0
        self.device = "none"
        self.startup_error = ""  # why the last configure failed

    # -- parameters ----------------------------------------------------------------------
    def _on_set_parameters(self, params) -> SetParametersResult:
        """Validate and apply the live parameters; read-only ones never reach here."""
        changes = {p.name: p.value for p in params}
        try:
            check_live({**self.p, **changes})
            if self.recognizer is not None:
                self.recognizer.update(**{k: v for k, v in changes.items() if k in LIVE})
        except (ParameterProblem, ValueError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.p.update(changes)
        return SetParametersResult(successful=True)

    # -- lifecycle -----------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            self._configure()
        except Exception as exc:  # a bad parameter, file or model: say which, stay unconfigured
            self.startup_error = str(exc)
            if not self.p["autostart"]:  # with autostart, main() says it once: "cannot start: ..."
                self.get_logger().error(f"configure failed: {exc}")
            self.recognizer = None
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        from .recognizer import FrameSlots, LoopPolicy, PlaceRecognizer
        from .runtime import open_localizer
        p = self.p
        check_startup(p)
        loc = open_localizer(p["checkpoint"], p["backbone"], p["device"], p["map_path"] or None,
                             logger=_LoggerAdapter(self.get_logger()), threads=p["threads"] or None,
                             runtime=p["runtime"], onnx=p["onnx_dir"] or None,
                             reranker=p["reranker"], top_k=p["top_k"],
                             refine_rounds=p["refine_rounds"])
        self.recognizer = PlaceRecognizer(loc, LoopPolicy.from_mapping(p))
        self.device = str(loc.device)
        self.slots = FrameSlots()
        self.pub_match = self.create_lifecycle_publisher(Float64MultiArray, "~/match", RESULTS_QOS)
        self.pub_top_k = self.create_lifecycle_publisher(Float64MultiArray, "~/top_k", RESULTS_QOS)
        self.pub_pose = self.create_lifecycle_publisher(PoseWithCovarianceStamped, "~/matched_pose", RESULTS_QOS)
        self.pub_loop = self.create_lifecycle_publisher(Float64MultiArray, "~/loop_closure", RESULTS_QOS)
        self.pub_debug = self.create_lifecycle_publisher(Image, "~/debug_image", DEBUG_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", RESULTS_QOS)
        self.srv_save = self.create_service(Trigger, "~/save_map", self._on_save_map)
        self.diag_timer = self.create_timer(float(p["diagnostics_period_sec"]), self._publish_diagnostics)
        self.get_logger().info(
            f"configured: {len(self.recognizer)} map places, backbone {loc.model.backbone.name}, "
            f"re-ranker {p['reranker']}, device {loc.device}, topics {list(p['image_topics'])}")

    def _camera_topics(self) -> list[str]:
        """image_topics without repeats (after name resolution: ``image`` and ``/image`` are one
        topic at the root), so that one frame gives one match; repeats are warned about."""
        topics, seen = [], set()
        for topic in self.p["image_topics"]:
            resolved = self.resolve_topic_name(topic)
            if resolved in seen:
                self.get_logger().warning(f"image_topics lists {resolved} more than once ({topic!r}): subscribing "
                                          "once")
                continue
            seen.add(resolved)
            topics.append(topic)
        return topics

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        qos = image_qos(self.p["image_qos_reliability"])
        for topic in self._camera_topics():
            kind = CompressedImage if topic.rstrip("/").endswith("/compressed") else Image
            self._subscriptions_live.append(
                self.create_subscription(kind, topic, lambda msg, t=topic: self.slots.put(msg, t), qos))
        self.slots.reopen()
        self._worker = threading.Thread(target=self._work, name="vpr_inference", daemon=True)
        self._worker.start()
        self.get_logger().info(f"active: listening on {list(self.p['image_topics'])}")
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._stop_processing()
        if self.recognizer is not None and self.recognizer.localizer.device.type == "cuda":
            import torch
            torch.cuda.empty_cache()
        self.get_logger().info("inactive: not processing images")
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._stop_processing()
        ok = self._save_on_shutdown()
        self._release()
        return TransitionCallbackReturn.SUCCESS if ok else TransitionCallbackReturn.FAILURE

    def _stop_processing(self) -> None:
        for sub in self._subscriptions_live:
            self.destroy_subscription(sub)
        self._subscriptions_live = []
        if self.slots is not None:
            self.slots.close()
        if self._worker is not None:
            self._worker.join(timeout=60)
            self._worker = None

    def _release(self) -> None:
        if self.recognizer is None:
            return
        for pub in (self.pub_match, self.pub_top_k, self.pub_pose, self.pub_loop, self.pub_debug):
            self.destroy_lifecycle_publisher(pub)
        self.destroy_publisher(self.pub_diag)
        self.destroy_service(self.srv_save)
        self.destroy_timer(self.diag_timer)
        self.recognizer = None
        self.slots = None

    def _save_on_shutdown(self) -> bool:
        if not self.p["save_map_path"] or self.recognizer is None:
            return True
        try:
            self.get_logger().info(self.recognizer.save(self.p["save_map_path"]))
            return True
        except Exception as exc:
            self.get_logger().error(f"saving the map on shutdown failed: {exc}")
            return False

    # -- inference -----------------------------------------------------------------------
    def _warn_throttled(self, key: str, text: str, period: float = 5.0) -> None:
        now = time.monotonic()
        if now - self._last_warn.get(key, -1e9) >= period:
            self._last_warn[key] = now
            self.get_logger().warning(text)

    def _work(self) -> None:
        """The inference thread: no input can end it; every failure is counted and reported."""
        slots = self.slots
        while (item := slots.take()) is not None:
            self._respect_max_rate()
            try:
                image = check_usable(to_rgb(item.msg, self.p["max_image_pixels"]))
            except ImageConversionError as exc:
                self.stats.bad += 1
                self._note_error(f"{item.source}: {exc}", DiagnosticStatus.WARN)
                kind = re.sub(r"[\d.]+", "#", str(exc))  # throttle per topic and kind of problem
                self._warn_throttled(f"bad:{item.source}:{kind}", f"skipping image on {item.source}: {exc}")
                continue
            try:
                self._process(image, item)
            except Exception as exc:  # keep the node alive; the reason goes to the log and diagnostics
                self.stats.errors += 1
                self._note_error(f"{type(exc).__name__}: {exc}", DiagnosticStatus.ERROR)
                self._warn_throttled("process", f"processing a frame from {item.source} failed: "
                                                f"{self.stats.last_error}")

    def _respect_max_rate(self) -> None:
        rate = self.p["max_rate_hz"]
        if rate > 0:
            wait = self._last_processed + 1.0 / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        self._last_processed = time.monotonic()

    def _note_error(self, text: str, level) -> None:
        self.stats.last_error, self.stats.last_error_level = text, level

    def _process(self, image: np.ndarray, item) -> None:
        header = item.msg.header
        recognition = self.recognizer.recognize(image, stamp_ns(header.stamp), item.source)
        stats = self.stats
        stats.processed += 1
        stats.rate_window.append(("out", time.monotonic()))
        latency_ms = (time.monotonic() - item.received) * 1e3
        stats.latencies.append(latency_ms)
        if recognition.result.skipped:
            self._note_error(f"{recognition.result.skipped} map candidates were not finite and were skipped",
                             DiagnosticStatus.WARN)
        if recognition.best is not None:
            self._publish(recognition, header, image, latency_ms)

    # -- output --------------------------------------------------------------------------
    def _publish(self, recognition, header, image, latency_ms: float) -> None:
        result, best = recognition.result, recognition.best
        q_sec = stamp_sec(header.stamp)
        map_sec = best.place.timestamp_ns / 1e9 if best.place.timestamp_ns is not None else math.nan
        map_w, map_h = best.place.image_size or (math.nan, math.nan)
        verdict = recognition.verdict
        match = Float64MultiArray()
        match.layout.dim = _dims((MATCH_LAYOUT, MATCH_SIZE))
        match.data = [q_sec, float(best.place_id), best.score, best.global_similarity, map_sec,
                      *[float(v) for v in best.homography.reshape(-1)], float(map_w), float(map_h), latency_ms,
                      float(recognition.accepted), float(verdict.place_id), verdict.score, float(verdict.agreeing),
                      verdict.distinctiveness]
        self.pub_match.publish(match)
        top = Float64MultiArray()
        top.layout.dim = _dims(("candidates", len(result.candidates)),
                               ("place_id,score,global_similarity,map_stamp_sec", 4))
        top.data = [v for c in result.candidates
                    for v in (float(c.place_id), c.score, c.global_similarity,
                              c.place.timestamp_ns / 1e9 if c.place.timestamp_ns is not None else math.nan)]
        self.pub_top_k.publish(top)
        if recognition.pose is not None:
            self.pub_pose.publish(self._pose_msg(recognition.pose, header, recognition.pose_variance_scale))
        self.stats.verified += int(recognition.accepted)
        if recognition.loop_closure is not None:
            self.pub_loop.publish(Float64MultiArray(data=list(recognition.loop_closure)))  # what LIO-SAM reads
            self.stats.loop_closures += 1
        if self.p["publish_debug_image"]:
            picture = draw_match(image, best, result.inliers)
            self.pub_debug.publish(Image(header=header, **rgb_to_fields(picture, "rgb8")))

    def _pose_msg(self, pose, header, variance_scale: float) -> PoseWithCovarianceStamped:
        msg = PoseWithCovarianceStamped()
        msg.header.stamp = header.stamp
        msg.header.frame_id = pose.frame_id or "map"
        p, o = msg.pose.pose.position, msg.pose.pose.orientation
        p.x, p.y, p.z = (float(v) for v in pose.position)
        o.x, o.y, o.z, o.w = (float(v) for v in pose.orientation)
        var = float(self.p["matched_pose_variance"]) * variance_scale
        msg.pose.covariance = [var if i % 7 == 0 else 0.0 for i in range(36)]
        return msg

    def _publish_diagnostics(self) -> None:
        stats, slots, rec = self.stats, self.slots, self.recognizer
        if rec is None or slots is None:
            return
        status = DiagnosticStatus(name="vpr_node: place recognition", hardware_id=self.device)
        status.level, status.message = DiagnosticStatus.OK, "ok"
        if stats.errors:
            status.level, status.message = DiagnosticStatus.ERROR, f"processing errors: {stats.errors}"
        elif stats.bad or stats.last_error_level == DiagnosticStatus.WARN:
            status.level, status.message = DiagnosticStatus.WARN, f"bad input messages: {stats.bad}"
        values = {
            "input_rate_hz": slots.received_rate(), "processed_rate_hz": stats.rate("out"),
            "frames_received": slots.received, "frames_processed": stats.processed,
            "frames_dropped": slots.dropped, "bad_messages": stats.bad, "processing_errors": stats.errors,
            "latency_ms_p50": stats.percentile(0.5), "latency_ms_p95": stats.percentile(0.95),
            "frames_verified": stats.verified, "loop_closures": stats.loop_closures,
            "map_places": len(rec), "keyframes_added": rec.keyframes_added, "map_full": rec.map_full,
            "device": self.device, "reranker": self.p["reranker"], "last_error": stats.last_error,
        }
        status.values = [KeyValue(key=k, value=f"{v:.2f}" if isinstance(v, float) else str(v))
                         for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(array)

    # -- map saving ----------------------------------------------------------------------
    def _on_save_map(self, request, response):
        path = self.p["save_map_path"]
        try:
            if not path:
                raise ValueError("save_map_path is not set (ros2 param set /vpr_node save_map_path DIR)")
            response.message = self.recognizer.save(path)
            response.success = True
            self.get_logger().info(response.message)
        except Exception as exc:
            response.success, response.message = False, str(exc)
            self.get_logger().error(f"~/save_map failed: {response.message}")
        return response


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


def _fatal(text: str) -> int:
    rclpy.logging.get_logger("vpr_node").fatal(f"cannot start: {text}")
    return 1


def _startup(node: VprNode) -> str | None:
    """Autostart: configure and activate; the reason when that failed, else None."""
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        return node.startup_error or "configure failed"
    if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
        return "activate failed"
    return None


def main(args: list[str] | None = None) -> int:
    """Run the node until SIGINT / SIGTERM; exit 0, or 1 when it cannot start or the map
    could not be saved on shutdown. Signals are handled here, not by rclpy, so that shutdown
    (and the map save) runs while ROS is still up and nothing ends in a traceback."""
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as exc:  # e.g. `-p map_path:=` (an override without a value): rcl cannot parse it
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        rclpy.logging.get_logger("vpr_node").fatal(f"cannot start: the command-line ROS arguments are invalid "
                                                   f"({reason.split(', at ')[0]}); give a value after ':=', e.g. "
                                                   "-p map_path:=/data/map")
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        try:
            node = VprNode()
        except ParameterUninitializedException as exc:  # `name: []` in a parameters file has no type
            name = str(exc).rsplit(": ", 1)[-1]
            return _fatal(f"parameter {name!r} has no value (an empty list in a parameters file has no type); "
                          "give it at least one element")
        except Exception as exc:  # e.g. a parameter out of its declared range
            return _fatal(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        if node.p["autostart"] and (reason := _startup(node)) is not None:
            node.destroy_node()
            return _fatal(reason)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
        saved = _shutdown(node)
        executor.remove_node(node)
        node.destroy_node()
        return 0 if saved else 1
    finally:
        rclpy.try_shutdown()


def _shutdown(node: VprNode) -> bool:
    """The lifecycle shutdown transition (saves the map if configured); False when it failed."""
    try:
        if node._state_machine.current_state[1] == "finalized":
            return True
        return node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS
    except Exception as exc:
        node.get_logger().error(f"shutdown failed: {exc}")
        return False
