"""Multi-GPU scaling: adt async (one worker per GPU, the PS on the CPU or a GPU) against PyTorch DDP.

    python -m bench.scaling --model resnet18 --image-size 64 --batch 256 --workers-list 1,2,4

For each N: two real `adt run --no-ui` jobs (bench.throughput.run_one), PS on the host CPU and PS
on a GPU, and one `torchrun --standalone --nproc-per-node N -m bench.ddp` job, all on the same
shards, model, per-GPU batch and decoding processes per GPU. Prints aggregate images/s, adt/DDP
and scaling efficiency (images/s at N / (N x images/s at 1)); writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.throughput import ensure_data, machine, run_one

ROOT = Path(__file__).resolve().parent.parent
MARGIN = 1.25  # data per worker over what its steps read: async workers run a little ahead of others


def ps_gpu(n: int, gpus: int) -> tuple[str, str]:
    """(device, label) for a PS on a GPU: the first GPU no worker uses, else worker 0's."""
    return (f"cuda:{n}", f"cuda:{n} own") if n < gpus else ("cuda:0", "cuda:0 shared")


def run_ddp(args: argparse.Namespace, data: Path, n: int, logdir: Path) -> dict[str, Any]:
    """One torchrun job; the environment passes through unchanged (NCCL_* as the machine sets them)."""
    # torch.distributed.run is torchrun's module: the same launcher, with this interpreter for sure.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
           "-m", "bench.ddp", "--data", str(data), "--model", args.model, "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.ddp_warmup),
           "--loader-workers", str(args.loaders_per_gpu), "--device", args.device]
    start = time.monotonic()
    # Its own session, so a hung job (NCCL) is stopped with all its ranks and the other rows still run.
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=args.ddp_timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
        code = 124
    (logdir / f"ddp-n{n}.txt").write_text(f"$ {shlex.join(cmd)}\n{stdout}\n{stderr}")
    lines = [line for line in stdout.splitlines() if line.startswith('{"bench": "ddp"')]
    result = json.loads(lines[-1]) if lines else {"images_per_s": 0.0}
    return {**result, "exit_code": code, "command": shlex.join(cmd),
            "wall_s": round(time.monotonic() - start, 1)}


def rate(row: dict[str, Any], key: str) -> float | None:
    run = row.get(key)
    return run["images_per_s"] if run and run["exit_code"] == 0 and run["images_per_s"] else None


def efficiency(rows: list[dict[str, Any]], row: dict[str, Any], key: str) -> float | None:
    """images/s at N over N x images/s at 1; None without a successful N=1 run."""
    one = next((rate(r, key) for r in rows if r["n"] == 1), None)
    at_n = rate(row, key)
    return round(at_n / (row["n"] * one), 3) if one and at_n else None


def ratio(row: dict[str, Any], key: str) -> float | None:
    adt, ddp = rate(row, key), rate(row, "ddp")
    return round(adt / ddp, 3) if adt and ddp else None


def print_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'N':>2} {'adt ps=cpu':>10} {'adt ps=gpu':>10} {'PS GPU':>13} {'DDP':>9} "
            f"{'cpu/DDP':>7} {'gpu/DDP':>7} {'eff cpu':>7} {'eff gpu':>7} {'eff DDP':>7}")
    lines = [head, "-" * len(head)]

    def num(value: float | None, spec: str) -> str:
        width = int(spec.split(".")[0])
        return "-".rjust(width) if value is None else format(value, spec)

    for r in rows:
        lines.append(
            f"{r['n']:>2} {num(rate(r, 'adt_ps_cpu'), '10.0f')} {num(rate(r, 'adt_ps_gpu'), '10.0f')} "
            f"{r['ps_gpu'] or '-':>13} {num(rate(r, 'ddp'), '9.0f')} "
            f"{num(ratio(r, 'adt_ps_cpu'), '7.2f')} {num(ratio(r, 'adt_ps_gpu'), '7.2f')} "
            f"{num(efficiency(rows, r, 'adt_ps_cpu'), '7.2f')} {num(efficiency(rows, r, 'adt_ps_gpu'), '7.2f')} "
            f"{num(efficiency(rows, r, 'ddp'), '7.2f')}")
    lines.append("aggregate images/s (adt: median over metrics intervals after warm-up; DDP: timed steps "
                 "after warm-up); cpu/DDP, gpu/DDP: adt with the PS there / DDP; "
                 "eff = images/s at N / (N x images/s at 1)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--batch", type=int, default=256, help="per worker / per GPU")
    p.add_argument("--workers-list", default="1,2,4", help="N values; on CUDA capped by the GPU count")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--ps", default="", help="PS placements to measure: cpu,gpu (default: both on CUDA)")
    p.add_argument("--transfer-dtype", choices=("fp32", "bf16"), default="fp32",
                   help="adt's gradient/parameter transfer; fp32 matches DDP's fp32 all-reduce")
    p.add_argument("--overlap", action="store_true", help="adt: push step k while step k+1 computes")
    p.add_argument("--steps", type=int, default=300, help="steps per worker (adt) / timed steps per rank (DDP)")
    p.add_argument("--ddp-warmup", type=int, default=30)
    p.add_argument("--ddp-timeout", type=float, default=300.0)
    p.add_argument("--loaders-per-gpu", type=int, default=6, help="decoding processes per worker / rank")
    p.add_argument("--train-samples", type=int, default=0,
                   help="0: enough that no run reaches an epoch end (adt validates and checkpoints there)")
    p.add_argument("--val-samples", type=int, default=1000)
    p.add_argument("--log-interval", type=float, default=1.0, help="adt metrics interval (seconds)")
    p.add_argument("--workdir", default="bench-out/scaling")
    p.add_argument("--out", default="", help="JSON results file (default WORKDIR/scaling.json)")
    args = p.parse_args(argv)

    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if args.device == "cuda" and not gpus:
        p.error("--device cuda, but torch sees no GPU. Fix: run on a GPU machine or pass --device cpu.")
    wanted = [int(n) for n in args.workers_list.split(",")]
    counts = [n for n in wanted if args.device == "cpu" or n <= gpus]
    if skipped := sorted(set(wanted) - set(counts)):
        print(f"skipping N={skipped}: only {gpus} GPU(s)", flush=True)
    if not counts:
        p.error(f"--workers-list {args.workers_list}: none fits {gpus} GPU(s). Fix: list smaller N.")
    placements = (args.ps or ("cpu,gpu" if gpus else "cpu")).split(",")
    if not set(placements) <= {"cpu", "gpu"} or ("gpu" in placements and not gpus):
        p.error(f"--ps {args.ps}: use cpu, gpu or cpu,gpu (gpu needs --device cuda).")

    work = Path(args.workdir).resolve()
    logdir = work / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    top = max(counts)
    train = args.train_samples or int(MARGIN * (args.steps + args.ddp_warmup) * top * args.batch)
    # Shards a multiple of every reader count (loaders x N for N | top), so readers get equal shares.
    data = ensure_data(work / "data", args.classes, args.image_size, train, args.val_samples,
                       shards=2 * args.loaders_per_gpu * top)
    base = dict(data=str(data), model=args.model, batch_size=args.batch, device=args.device,
                transfer_dtype=args.transfer_dtype, overlap=args.overlap, lr=0.05, epochs=1000,
                runs_dir=str(work / "runs"), checkpoints_dir=str(work / "checkpoints"),
                log_interval=args.log_interval)

    rows: list[dict[str, Any]] = []
    for n in counts:
        row: dict[str, Any] = {"n": n, "ps_gpu": None, "adt_ps_cpu": None, "adt_ps_gpu": None}
        for place in placements:
            ps_device, label = ("cpu", "cpu") if place == "cpu" else ps_gpu(n, gpus)
            print(f"== N={n} adt, PS on {label}", flush=True)
            row[f"adt_ps_{place}"] = run_one({**base, "ps_device": ps_device}, n, "flat", args.steps * n,
                                             args.loaders_per_gpu * n, logdir)
            if place == "gpu":
                row["ps_gpu"] = label
        print(f"== N={n} DDP", flush=True)
        row["ddp"] = run_ddp(args, data, n, logdir)
        rows.append(row)
        print(print_table(rows).splitlines()[-2], flush=True)

    info = machine()
    info["gpus"] = gpus
    table = print_table(rows)
    print(f"\n{info}\nargs: {vars(args)}\n{table}")
    out = Path(args.out or work / "scaling.json")
    out.write_text(json.dumps({"machine": info, "args": vars(args), "data": str(data), "rows": rows,
                               "table": table}, indent=1))
    print(f"results: {out}")
    runs = [r[k] for r in rows for k in ("adt_ps_cpu", "adt_ps_gpu", "ddp") if r[k]]
    return 0 if all(run["exit_code"] == 0 for run in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
