# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""``vpr_node``: run the node as a process until SIGINT / SIGTERM (``ros2 run dhe_vpr_ros vpr_node``,
``python -m dhe_vpr_ros node``); startup errors end it with one ``cannot start`` line."""
from __future__ import annotations

import signal
import threading

import rclpy
import rclpy.logging
from rclpy.exceptions import ParameterUninitializedException
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions

from .node import VprNode

__all__ = ["main"]


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
