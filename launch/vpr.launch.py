# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Start vpr_node (a lifecycle node) with a parameters file and optional overrides.

    ros2 launch dhe_vpr_ros vpr.launch.py map_path:=/data/map image_topic:=/camera/image_raw
    ros2 launch dhe_vpr_ros vpr.launch.py params_file:=my.yaml namespace:=robot1

``params_file`` defaults to the package's config/vpr.yaml. ``map_path``, ``checkpoint``,
``device``, ``autostart``, ``runtime``, ``onnx_dir`` and ``precision`` override the file only when
they are given, so a file that sets
them is obeyed. ``image_topic`` remaps the node's default input ``image``. With
``autostart:=false`` the node waits unconfigured for a lifecycle manager
(``ros2 lifecycle set /vpr_node configure``).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

OVERRIDES = {  # argument -> (parameter type, description); passed only when given
    "map_path": (str, "map directory from build_map"),
    "checkpoint": (str, "model checkpoint (default: the shipped model)"),
    "device": (str, "cpu, cuda or cuda:N"),
    "autostart": (bool, "configure and activate at start (the node's default: true)"),
    "runtime": (str, "auto (the checkpoint's export when there is one), torch or onnxruntime"),
    "onnx_dir": (str, "with runtime onnxruntime: the folder `export` wrote"),
    "precision": (str, "float, or int8: the int8 backbone `export --int8` wrote"),
}


def _node(context):
    overrides = {}
    for name, (kind, _) in OVERRIDES.items():
        value = LaunchConfiguration(name).perform(context)
        if value != "":
            overrides[name] = value.lower() in ("true", "1", "yes") if kind is bool else value
    return [Node(
        package="dhe_vpr_ros",
        executable="vpr_node",
        name="vpr_node",
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), *([overrides] if overrides else [])],
        remappings=[("image", LaunchConfiguration("image_topic"))],
        output="screen",
    )]


def generate_launch_description():
    config = os.path.join(get_package_share_directory("dhe_vpr_ros"), "config", "vpr.yaml")
    arguments = [
        DeclareLaunchArgument("params_file", default_value=config, description="parameters file"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("image_topic", default_value="image",
                              description="camera topic the node's 'image' input is remapped to"),
        *[DeclareLaunchArgument(name, default_value="", description=f"{text} (empty: from params_file)")
          for name, (_, text) in OVERRIDES.items()],
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_node)])
