"""Start vpr_node with config/vpr.yaml; map, checkpoint, device, namespace and the camera
topic can be set on the command line:

    ros2 launch dhe_vpr_ros vpr.launch.py map_path:=/data/map image_topic:=/camera/image_raw

The node reads its image topics from the ``image_topics`` parameter (default ``[image]``);
``image_topic`` remaps that default name. Everything else lives in the parameters file.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    config = os.path.join(get_package_share_directory("dhe_vpr_ros"), "config", "vpr.yaml")
    args = {
        "params_file": (config, "parameters file"),
        "map_path": ("", "map directory from build_map (empty: the map in params_file)"),
        "checkpoint": ("", "model checkpoint (empty: the shipped default)"),
        "device": ("cpu", "cpu or cuda"),
        "namespace": ("", "namespace of the node"),
        "image_topic": ("image", "camera topic the node's 'image' input is remapped to"),
    }
    overrides = {name: LaunchConfiguration(name) for name in ("map_path", "checkpoint", "device")}
    return LaunchDescription([
        *[DeclareLaunchArgument(name, default_value=default, description=text)
          for name, (default, text) in args.items()],
        Node(
            package="dhe_vpr_ros",
            executable="vpr_node",
            name="vpr_node",
            namespace=LaunchConfiguration("namespace"),
            parameters=[LaunchConfiguration("params_file"), overrides],
            remappings=[("image", LaunchConfiguration("image_topic"))],
            output="screen",
        ),
    ])
