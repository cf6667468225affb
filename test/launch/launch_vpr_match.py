# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""launch_testing: the package's own vpr.launch.py, an image in, ~/match out.

Run by test/test_ros2_cli.py as `launch_test test/launch/launch_vpr_match.py` in a sourced
workspace (the file name keeps pytest from collecting it directly). The map and the image come
from the environment: DHE_VPR_TEST_MAP (a map directory), DHE_VPR_TEST_IMAGE (an image of
place DHE_VPR_TEST_PLACE), DHE_VPR_TEST_PARAMS (a parameters file with reliable image QoS).
"""
import os
import time
import unittest

import cv2
import launch_testing.actions
import rclpy
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Float64MultiArray


def generate_test_description():
    launch_file = os.path.join(get_package_share_directory("dhe_vpr_ros"), "launch", "vpr.launch.py")
    vpr = IncludeLaunchDescription(PythonLaunchDescriptionSource(launch_file), launch_arguments={
        "map_path": os.environ["DHE_VPR_TEST_MAP"], "params_file": os.environ["DHE_VPR_TEST_PARAMS"],
        "image_topic": "/test/camera"}.items())
    return LaunchDescription([vpr, launch_testing.actions.ReadyToTest()])


class TestMatch(unittest.TestCase):
    def test_an_image_gets_a_match_for_its_place(self):
        rclpy.init()
        node = rclpy.create_node("launch_test_probe")
        try:
            got = []
            node.create_subscription(Float64MultiArray, "/vpr_node/match", got.append, 10)
            qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
            pub = node.create_publisher(Image, "/test/camera", qos)
            rgb = cv2.cvtColor(cv2.imread(os.environ["DHE_VPR_TEST_IMAGE"]), cv2.COLOR_BGR2RGB)
            msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=rgb.shape[1] * 3,
                        data=rgb.tobytes())
            msg.header.stamp.sec = 4000
            end = time.monotonic() + 120
            while not got and time.monotonic() < end:  # the node may still be loading its model
                if pub.get_subscription_count():
                    pub.publish(msg)
                deadline = time.monotonic() + 2.0
                while not got and time.monotonic() < deadline:
                    rclpy.spin_once(node, timeout_sec=0.1)
            self.assertTrue(got, "no ~/match within 120 s")
            self.assertEqual(int(got[0].data[1]), int(os.environ["DHE_VPR_TEST_PLACE"]))
            self.assertEqual(got[0].data[0], 4000.0)
        finally:
            node.destroy_node()
            rclpy.shutdown()


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_the_node_exited_cleanly(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)
