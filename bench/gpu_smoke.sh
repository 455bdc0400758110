#!/usr/bin/env bash
# On the GPU machine: install the carried wheels, then a tiny end-to-end GPU job (PS and workers
# on CUDA, device maps) and the loader and throughput benchmarks. Usage: bash bench/gpu_smoke.sh
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -c "import torch; print(torch.__version__, torch.cuda.device_count())"
