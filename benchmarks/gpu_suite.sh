#!/usr/bin/env bash
# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
# The GPU checks in one command (about 7 minutes on an H100; needs a CUDA build of torch):
#   1. paper-preset K=32 re-ranking in bf16, and its ratio to MAGSAC and to the per-pair loop;
#   2. node latency with the CCT-14 backbone on cuda (frames per second);
#   3. training steps per second for both stages (CCT-14, paper preset);
#   4. the node's per-frame stages (pipeline_speed.py) on the device, idle and with 4 busy cores;
#   5. the exported ONNX models through onnxruntime (its CUDA provider where installed).
# DEVICE=cpu QUICK=1 bash benchmarks/gpu_suite.sh dry-runs it on a CPU with small sizes.
# The wheels the device lacks come from .wheels-cp312/ (benchmarks/gpu_wheels.sh fetches them beforehand;
# carry the folder): installed offline, without dependencies, so the device's CUDA torch stays.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if [ -d .wheels-cp312 ]; then
  "$PY" -m pip install --quiet --no-index --no-deps .wheels-cp312/*.whl
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the package from this checkout, no install step
DEVICE=${DEVICE:-cuda}
if [ "${QUICK:-0}" = 1 ]; then SECONDS_NODE=5; STEPS=2; KS=8; else SECONDS_NODE=20; STEPS=10; KS=32; fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
echo "== 1/5 re-ranking speed"
timeout 300 "$PY" benchmarks/rerank_speed.py --device "$DEVICE" --ks "$KS" --repeats 5 | tee /tmp/gpu_rerank.txt
echo "== 2/5 node latency, CCT-14 backbone"
if "$PY" -c "import rclpy" 2>/dev/null; then
  timeout 300 "$PY" benchmarks/node_latency.py --device "$DEVICE" --backbone cct14 --seconds "$SECONDS_NODE" \
    | tee /tmp/gpu_node.txt
else
  echo "rclpy is not installed here (no ROS 2 wheels for this Python): node latency skipped" | tee /tmp/gpu_node.txt
fi
echo "== 3/5 training throughput, CCT-14 + paper preset"
timeout 300 "$PY" benchmarks/train_speed.py --device "$DEVICE" --backbone cct14 --batch-size 8 --steps "$STEPS" \
  | tee /tmp/gpu_train.txt
echo "== 4/5 per-frame stages (light backbone), idle and with 4 busy cores"
timeout 300 "$PY" benchmarks/pipeline_speed.py --device "$DEVICE" --top-k 32 --label idle | tee /tmp/gpu_pipe.txt
timeout 300 "$PY" benchmarks/pipeline_speed.py --device "$DEVICE" --top-k 32 --busy-cores 4 --label busy4 \
  | tee -a /tmp/gpu_pipe.txt
echo "== 5/5 onnxruntime"
rm -rf /tmp/gpu_onnx
if "$PY" -c "import onnxruntime" 2>/dev/null; then
  timeout 300 "$PY" -m dhe_vpr_ros export --out /tmp/gpu_onnx
  timeout 300 "$PY" - <<'PYEOF' | tee /tmp/gpu_ort.txt
import time
import numpy as np
import onnxruntime as ort
from dhe_vpr_ros.runtime.onnx import load_onnx_model
model = load_onnx_model("/tmp/gpu_onnx")
print("providers", model.providers)
rng = np.random.default_rng(0)
images = rng.standard_normal((1, 3, 384, 384)).astype(np.float32)
query = rng.standard_normal((1, 112, 24, 24)).astype(np.float32)
cands = rng.standard_normal((32, 112, 24, 24)).astype(np.float32)
for name, session, feed in (("embed", model._backbone_session, {"images": images}),
                            ("regressor_K32", model._regressor_session, {"query": query, "candidates": cands})):
    session.run(None, feed)
    start = time.perf_counter()
    for _ in range(20):
        session.run(None, feed)
    print(f"ort_{name}_ms={(time.perf_counter() - start) / 20 * 1e3:.2f}")
PYEOF
else
  echo "onnxruntime is not installed here: skipped" | tee /tmp/gpu_ort.txt
fi
echo "== summary"
grep -h "=" /tmp/gpu_rerank.txt /tmp/gpu_node.txt /tmp/gpu_train.txt /tmp/gpu_pipe.txt /tmp/gpu_ort.txt || true
"$PY" - <<'PYEOF'
import re
text = open("/tmp/gpu_rerank.txt").read()
values = dict(re.findall(r"^(\w+)=([\d.naninf]+)$", text, re.M))
paper, magsac = float(values.get("paper_dhe_ms_K32", "nan")), float(values.get("magsac_ms_K32", "nan"))
print(f"paper_vs_magsac_K32={magsac / paper:.2f}")
PYEOF
