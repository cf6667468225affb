#!/usr/bin/env bash
# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
# The GPU checks in one command (about 5 minutes on an H100; needs a CUDA build of torch):
#   1. paper-preset K=32 re-ranking in bf16, and its ratio to MAGSAC and to the per-pair loop;
#   2. node latency with the CCT-14 backbone on cuda (frames per second);
#   3. training steps per second for both stages (CCT-14, paper preset).
# DEVICE=cpu QUICK=1 bash benchmarks/gpu_suite.sh dry-runs it on a CPU with small sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
if [ "${QUICK:-0}" = 1 ]; then SECONDS_NODE=5; STEPS=2; KS=8; else SECONDS_NODE=20; STEPS=10; KS=32; fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
echo "== 1/3 re-ranking speed"
timeout 300 "$PY" benchmarks/rerank_speed.py --device "$DEVICE" --ks "$KS" --repeats 5 | tee /tmp/gpu_rerank.txt
echo "== 2/3 node latency, CCT-14 backbone"
timeout 300 "$PY" benchmarks/node_latency.py --device "$DEVICE" --backbone cct14 --seconds "$SECONDS_NODE" \
  | tee /tmp/gpu_node.txt
echo "== 3/3 training throughput, CCT-14 + paper preset"
timeout 300 "$PY" benchmarks/train_speed.py --device "$DEVICE" --backbone cct14 --batch-size 8 --steps "$STEPS" \
  | tee /tmp/gpu_train.txt
echo "== summary"
grep -h "=" /tmp/gpu_rerank.txt /tmp/gpu_node.txt /tmp/gpu_train.txt
"$PY" - <<'PYEOF'
import re
text = open("/tmp/gpu_rerank.txt").read()
values = dict(re.findall(r"^(\w+)=([\d.naninf]+)$", text, re.M))
paper, magsac = float(values.get("paper_dhe_ms_K32", "nan")), float(values.get("magsac_ms_K32", "nan"))
print(f"paper_vs_magsac_K32={magsac / paper:.2f}")
PYEOF
