#!/usr/bin/env bash
# On the GPU machine: the engine-speed benchmark (docs/BENCHMARKS.md "Engine speed").
# Usage: [VARIANTS=eager,eager+mps,compile] [WORKERS=0,2,4] bash bench/gpu_speed.sh OUTDIR [REPEATS] [--profile]
# A variant ending in +mps runs adt with --mps (the job's own NVIDIA MPS daemon).
set -uo pipefail
out=${1:?OUTDIR}; repeats=${2:-3}; mkdir -p "$out"
variants=${VARIANTS:-eager,compile}; workers=${WORKERS:-0,2,4}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# 220 updates of 256 stay inside the first 60,000-sample epoch: no epoch end in the window.
B="python3 -m bench.throughput --model resnet18 --image-size 64 --classes 200 --batch 256 --device cuda
   --ps-device cuda --loader-total 12 --train-samples 60000 --val-samples 1000 --workdir /tmp/bench"
$B --workers "$workers" --transports flat --variants "$variants" --repeats "$repeats" --updates 220 \
   --out "$out/throughput.json" 2>&1 | tee "$out/throughput.txt"
python3 -m bench.loader --data /tmp/bench/data/synth-c200-s64-n60000 --processes 6,12 --seconds 4 2>&1 | tee "$out/loader.txt"
if [[ " $* " == *" --profile "* ]]; then  # the single process of each variant, and eager N=2
  P="$B --transports flat --updates 80 --raw-steps 0 --out /tmp/bench/prof.json"
  for v in $(tr , '\n' <<<"$variants" | grep -v mps); do ADT_PROFILE="$out/prof-$v" $P --workers 0 --variants "$v" > /dev/null 2>&1; done
  [[ $variants == *eager* ]] && ADT_PROFILE="$out/prof-eager" $P --workers 2 --variants eager > /dev/null 2>&1
fi
ls -R "$out"
