#!/usr/bin/env bash
# On a GPU machine, what a new user types (issue 20), each printed whole: the README's main job,
# ResNet-18 with no device flags, the placements that cannot work, and `adt launch` on GPUs against
# `adt run` with the same flags. Usage: bash bench/gpu_defaults.sh OUTDIR [EPOCHS]
set -uo pipefail
out=${1:?OUTDIR}; epochs=${2:-4}; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
adt() { python3 -m adt_tui.cli "$@"; }
w=/tmp/defaults; keep=(--runs-dir $w/runs --checkpoints-dir $w/ck)
nvidia-smi -L
step() { echo; echo "=== $1"; }
step "the README's main job: adt run --no-ui"
adt run --no-ui "${keep[@]}" 2>&1 | tee "$out/main-job.txt" | grep -v "^synthetic"
data=$(python3 -c "from pathlib import Path; from bench.throughput import ensure_data
print(ensure_data(Path('$w/data'), 100, 32, 24000, 2000, 24))")
R=(--data "$data" --model resnet18 --epochs "$epochs")
step "ResNet-18, no device flags"; adt run --no-ui "${R[@]}" "${keep[@]}" --run-id defaults 2>&1 | tee "$out/defaults.txt"
step "refused: --ps-device cpu"; adt run --no-ui "${R[@]}" "${keep[@]}" --ps-device cpu; echo "exit $?"
step "refused: --device cuda:3"; adt run --no-ui "${R[@]}" "${keep[@]}" --device cuda:3; echo "exit $?"
G=(--device cuda --ps-device cuda)
step "adt launch, 1 node x 3 processes, ${G[*]}"
adt launch --nnodes 1 --node-rank 0 --nproc-per-node 3 --master 127.0.0.1:29517 "${R[@]}" "${G[@]}" \
  "${keep[@]}" --run-id launched 2>&1 | tee "$out/launch.txt"; echo "exit $?"
step "adt run, the same flags"; adt run --no-ui "${R[@]}" "${G[@]}" --workers 2 "${keep[@]}" --run-id same 2>&1 | tee "$out/run-same.txt"
step "one GPU: the default"; CUDA_VISIBLE_DEVICES=0 adt run --no-ui "${R[@]}" "${keep[@]}" --run-id one-gpu 2>&1 | tee "$out/one-gpu.txt"
step "summary"
for id in defaults launched same one-gpu; do
  python3 - "$w/runs/$id/events.jsonl" "$id" <<'PY'
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
start = next(e for e in ev if e["kind"] == "run_start"); end = [e for e in ev if e["kind"] == "run_end"][-1]
vals = [e for e in ev if e["kind"] == "validation"]
joins = {e["worker"]: e["device"] for e in ev if e["kind"] == "worker_join"}
ps = [e for e in ev if e["kind"] == "ps_metrics" and e["staleness"]["max"] is not None]
print(f"{sys.argv[2]:9} PS {start['device']} workers {joins} val acc {[round(v['acc'], 3) for v in vals]} "
      f"max staleness {max((e['staleness']['max'] for e in ps), default=0)} "
      f"wall {end['t'] - start['t']:.1f}s -> {end['outcome']}")
PY
done 2>&1 | tee "$out/summary.txt"
