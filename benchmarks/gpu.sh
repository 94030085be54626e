#!/usr/bin/env bash
# One prepared GPU run: the serving ceiling and the service with the CUDA execution provider.
#
#   bash benchmarks/gpu.sh            # about 5 minutes with a GPU; on a CPU machine it skips GPU parts
#
# Prints the execution providers onnxruntime offers and the ones a session will request. Then it runs
# benchmarks/serving.py (the ceiling and our service under locust, without the naive baseline) with
# short load levels, so the whole run stays under 8 minutes. On a machine without a CUDA device it prints that and runs the
# same steps on the CPU with even shorter levels, so the script itself is checked anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}

"$PYTHON" - <<'PY'
import onnxruntime as ort
from serving.engine import choose_providers, cuda_device_count
print("onnxruntime", ort.__version__, "available providers:", ort.get_available_providers())
print("CUDA devices seen by the driver:", cuda_device_count())
print("providers the service will request:", choose_providers())
PY

if "$PYTHON" -c 'import sys; from serving.engine import cuda_device_count; sys.exit(0 if cuda_device_count() > 0 else 1)'; then
  echo "GPU found: running the serving benchmark with the CUDA provider"
  if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
  # REQUIRE_GPU makes the service refuse to start unless CUDA is really active.
  REQUIRE_GPU=1 timeout 450 "$PYTHON" benchmarks/serving.py --seconds 15 --users 1,16,64 --skip-naive --no-write
else
  echo "no CUDA device: skipping the GPU parts, running the same steps on the CPU"
  timeout 450 "$PYTHON" benchmarks/serving.py --seconds 3 --users 1,4 --skip-naive --no-write
fi
