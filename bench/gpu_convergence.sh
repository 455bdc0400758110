#!/usr/bin/env bash
# The convergence table of issue 21 on a machine with two GPUs, in one device call: two streams of
# `python -m bench.convergence`, each pinned to its own GPU (CUDA_VISIBLE_DEVICES), so two jobs run
# at once; accuracy at equal samples does not depend on that, images/s is per GPU.
# Usage: bash bench/gpu_convergence.sh OUTDIR a|b one-gpu|two-gpus|rules [SEEDS]
#        bash bench/gpu_convergence.sh OUTDIR a|b args SEEDS NAME BENCH-ARGS...  (one stream on GPU 0)
#   a: ResNet-18, 200 classes, 64 px, 50,000 samples, 10 epochs
#   b: ResNet-18, 100 classes, 32 px, 50,000 samples, 20 epochs
#   one-gpu:  single process and N=2 on GPU 0, N=4 and N=8 on GPU 1, all with --mps (defaults)
#   gpu0, gpu1: one half of one-gpu (run two sets at once: `... a gpu1 & ... b gpu0; wait`)
#   two-gpus: N=2, 4, 8 over both GPUs (1, 2, 4 workers per GPU; no MPS), then N=4 --overlap
#   rules: on one GPU (--mps), what N synchronous workers reach (--sync 4,8), dana at N=4 and 8,
#          then N=4 with the default rule and --overlap, and local-sgd at its defaults
set -uo pipefail
out=${1:?OUTDIR}; set=${2:?a or b}; plan=${3:?one-gpu or two-gpus}; seeds=${4:-0,1,2}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
case $set in
  a) D=(--model resnet18 --image-size 64 --classes 200 --batch 256 --train-samples 50000 --epochs 10) ;;
  b) D=(--model resnet18 --image-size 32 --classes 100 --batch 256 --train-samples 50000 --epochs 20) ;;
esac
D+=(--device auto --ps-device auto --loader-total 12 --seeds "$seeds")
nvidia-smi -L
mkdir -p /tmp/conv/data
python3 - "${D[@]}" <<'PY'
import sys
from pathlib import Path
from bench.throughput import ensure_data
a = dict(zip(sys.argv[1::2], sys.argv[2::2]))
print("data:", ensure_data(Path("/tmp/conv/data"), int(a["--classes"]), int(a["--image-size"]),
                           int(a["--train-samples"]), 1000, 24))
PY
stream() {  # GPU NAME ARGS...: one bench.convergence invocation on one GPU
  local gpu=$1 name=$2; shift 2
  mkdir -p /tmp/conv/$name && ln -sfn /tmp/conv/data /tmp/conv/$name/data
  CUDA_VISIBLE_DEVICES=$gpu python3 -m bench.convergence "${D[@]}" --workdir /tmp/conv/$name \
    --out "$out/$set-$name.json" "$@" > "$out/$set-$name.log" 2>&1
}
if [ "$plan" = gpu0 ]; then  # one half of one-gpu: two sets can then share the machine
  stream 0 gpu0 --workers 2 --rules default --mps
elif [ "$plan" = gpu1 ]; then
  stream 1 gpu1 --workers 4,8 --rules default --mps --skip-single
elif [ "$plan" = args ]; then
  stream 0 "$5" "${@:6}"
elif [ "$plan" = rules ]; then
  stream 0 rules --workers 4,8 --rules dana --sync 4,8 --skip-single --mps
  stream 0 rules2 --workers 4 --rules default+overlap,local-sgd --skip-single --mps
elif [ "$plan" = one-gpu ]; then
  stream 0 gpu0 --workers 2 --rules default --mps &
  stream 1 gpu1 --workers 4,8 --rules default --mps --skip-single &
  wait
else
  mkdir -p /tmp/conv/two && ln -sfn /tmp/conv/data /tmp/conv/two/data
  python3 -m bench.convergence "${D[@]}" --workdir /tmp/conv/two --workers 2,4,8 --rules default \
    --skip-single --out "$out/$set-two.json" > "$out/$set-two.log" 2>&1
  python3 -m bench.convergence "${D[@]}" --workdir /tmp/conv/two --workers 4 --rules default+overlap \
    --skip-single --out "$out/$set-two-overlap.json" > "$out/$set-two-overlap.log" 2>&1
fi
tail -n 3 "$out"/*.log
