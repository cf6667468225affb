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
newest frame per topic (``FrameSlots``); a frame is converted and embedded on one thread while the
frame before it is ranked and published on another (``runtime.pipeline``). See README "The node"
for every topic and QoS.
"""
from __future__ import annotations

import re
import time

import numpy as np

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseWithCovarianceStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from ..image_conversion import ImageConversionError, check_usable, rgb_to_fields, to_rgb
from ..loop.policy import LoopPolicy
from ..loop.recognizer import PlaceRecognizer
from ..runtime import open_localizer
from ..method.timing import Stages
from ..runtime.frame_slots import FrameSlots
from ..runtime.pipeline import Pipeline
from .debug_image import draw_match
from .diagnostics import NodeStats, diagnostics_message
from .messages import (DEBUG_QOS, RESULTS_QOS, image_qos, match_message, pose_message, stamp_ns, stamp_sec,
                       top_k_message)
from .parameters import LIVE, PARAMETERS, ParameterProblem, check_live, check_startup, descriptor

__all__ = ["LoggerAdapter", "VprNode"]


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
        self._pipeline: Pipeline | None = None
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
            if self.recognizer is not None and changes.get("precision", self.p["precision"]) != self.p["precision"]:
                raise ParameterProblem("precision changes the features the map holds: deactivate and clean up the "
                                       "node, set it, then configure again")
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
        p = self.p
        check_startup(p)
        loc = open_localizer(p["checkpoint"], p["backbone"], p["device"], p["map_path"] or None,
                             logger=LoggerAdapter(self.get_logger()), threads=p["threads"] or None,
                             runtime=p["runtime"], onnx=p["onnx_dir"] or None, precision=p["precision"],
                             reranker=p["reranker"], top_k=p["top_k"],
                             refine_rounds=p["refine_rounds"], regressor_candidates=p["regressor_candidates"])
        self.recognizer = PlaceRecognizer(loc, LoopPolicy.from_mapping(p), logger=LoggerAdapter(self.get_logger()))
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
        self._pipeline = Pipeline(self.slots.take, self._prepare, self._finish, self._stage_failed,
                                  self.p["threads"] or None, LoggerAdapter(self.get_logger()), name="vpr",
                                  waiting=self.slots.waiting)
        self._pipeline.start()
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
        if self._pipeline is not None:
            self._pipeline.join(timeout=60)
            self._pipeline = None

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

    def _prepare(self, item):
        """The first stage (one thread): pace, convert and embed the newest frame; a bad frame is counted
        and skipped (None). Its torch threads follow its share of the free cores (``runtime.pipeline``)."""
        self._respect_max_rate()
        stages = Stages(self.recognizer.localizer.device)
        try:
            with stages("convert"):
                image = check_usable(to_rgb(item.msg, self.p["max_image_pixels"]))
        except ImageConversionError as exc:
            self.stats.bad += 1
            self._note_error(f"{item.source}: {exc}", DiagnosticStatus.WARN)
            kind = re.sub(r"[\d.]+", "#", str(exc))  # throttle per topic and kind of problem
            self._warn_throttled(f"bad:{item.source}:{kind}", f"skipping image on {item.source}: {exc}")
            return None
        with stages("embed"):
            embedded = self.recognizer.localizer.embed([image])
        return item, image, embedded, stages.ms

    def _finish(self, prepared) -> None:
        """The second stage (the other thread, while the first embeds the next frame): rank, judge, publish."""
        item, image, embedded, stages_ms = prepared
        self._process(image, item, embedded, stages_ms)

    def _stage_failed(self, stage: str, item, exc: Exception) -> None:
        """No input can end the pipeline: every failure is counted and reported."""
        self.stats.errors += 1
        source = item.source if stage == "first" else item[0].source
        self._note_error(f"{type(exc).__name__}: {exc}", DiagnosticStatus.ERROR)
        self._warn_throttled("process", f"processing a frame from {source} failed: {self.stats.last_error}")

    def _respect_max_rate(self) -> None:
        rate = self.p["max_rate_hz"]
        if rate > 0:
            wait = self._last_processed + 1.0 / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        self._last_processed = time.monotonic()

    def _note_error(self, text: str, level) -> None:
        self.stats.last_error, self.stats.last_error_level = text, level

    def _process(self, image: np.ndarray, item, embedded, stages_ms: dict) -> None:
        header = item.msg.header
        recognition = self.recognizer.recognize(image, stamp_ns(header.stamp), item.source, embedded=embedded)
        recognition.stages_ms = {**stages_ms, **recognition.stages_ms}
        stats = self.stats
        stats.processed += 1
        stats.rate_window.append(("out", time.monotonic()))
        latency_ms = (time.monotonic() - item.received) * 1e3
        stats.add_stages(recognition.stages_ms)
        stats.latencies.append(latency_ms)
        if recognition.result.skipped:
            self._note_error(f"{recognition.result.skipped} map candidates were not finite and were skipped",
                             DiagnosticStatus.WARN)
        if recognition.best is not None:
            self._publish(recognition, header, image, latency_ms)

    # -- output --------------------------------------------------------------------------
    def _publish(self, recognition, header, image, latency_ms: float) -> None:
        result, best = recognition.result, recognition.best
        self.pub_match.publish(match_message(recognition, stamp_sec(header.stamp), latency_ms))
        self.pub_top_k.publish(top_k_message(result.candidates))
        if recognition.pose is not None:
            variance = float(self.p["matched_pose_variance"]) * recognition.pose_variance_scale
            self.pub_pose.publish(pose_message(recognition.pose, header, variance))
        self.stats.verified += int(recognition.accepted)
        if recognition.loop_closure is not None:
            self.pub_loop.publish(Float64MultiArray(data=list(recognition.loop_closure)))  # what LIO-SAM reads
            self.stats.loop_closures += 1
        if self.p["publish_debug_image"]:
            picture = draw_match(image, best, result.inliers)
            self.pub_debug.publish(Image(header=header, **rgb_to_fields(picture, "rgb8")))

    def _publish_diagnostics(self) -> None:
        if self.recognizer is None or self.slots is None:
            return
        self.pub_diag.publish(diagnostics_message(self.stats, self.slots, self.recognizer, self.device,
                                                  self.p["reranker"], self.get_clock().now().to_msg()))

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


class LoggerAdapter:
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
