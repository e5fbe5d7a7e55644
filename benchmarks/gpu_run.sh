#!/usr/bin/env bash
# The GPU checks of the attention backends, one command on a lent GPU (see docs/benchmarks.md):
#   bash benchmarks/gpu_run.sh OUT_DIR
# Needs torch with CUDA; installs carried wheels from .whl/ if present (offline machines).
# Writes device.txt, gpu_tests.log and bench_model.md into OUT_DIR; about 8 minutes on an H100.
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
timeout 300 python3 -m pytest tests/test_gpu.py -q -s -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log"
# S/2 at 256 and 1024 tokens (bf16 and fp32), then XL/2 at 256 tokens for MFU (989 TFLOP/s: H100 / H200 SXM, dense bf16).
for args in "--dtype bf16 --batch 64" "--dtype fp32 --batch 64" "--dtype bf16 --batch 16 --input-size 64" \
            "--dtype bf16 --batch 32 --preset XL/2 --variants vanilla sdt --peak-tflops 989"; do
  timeout 150 python3 benchmarks/bench_model.py --device cuda --repeats 8 --markdown $args 2>&1 | tee -a "$out/bench_model.md"
done
