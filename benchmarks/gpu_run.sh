#!/usr/bin/env bash
# The GPU checks of issue 2, as run on a lent H100 (see docs/benchmarks.md):
#   bash benchmarks/gpu_run.sh OUT_DIR
# Needs torch with CUDA; installs carried wheels from .whl/ if present (offline machines).
set -u
out=${1:-gpu_out}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/device.txt"
timeout 240 python3 -m pytest tests/test_gpu.py -q -s -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log"
for args in "--dtype bf16 --batch 64" "--dtype fp32 --batch 64" "--dtype bf16 --batch 16 --input-size 64"; do
  timeout 100 python3 benchmarks/bench_model.py --device cuda --repeats 8 --markdown $args 2>&1 | tee -a "$out/bench_model.md"
done
