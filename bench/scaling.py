"""Multi-GPU scaling: adt with its defaults against PyTorch DDP, in images/s and time to accuracy.

    python -m bench.scaling --out OUT/scaling.json      # 2 H200s: meant to fit 8 minutes, data too
    python -m bench.scaling --plot OUT/scaling.json     # redraw table + PNG from a results file

Four real training runs (more with a longer --gpus-list), same synthetic data, epochs and
per-GPU batch (defaults: ResNet-18, 64x64, 200 classes, 50,000 images, 10 epochs, batch 256):
- "adt 1 GPU": `adt run --no-ui` on CUDA_VISIBLE_DEVICES=0 with no placement flags, what a user
  types on a one-GPU machine (the placement then trains in one process);
- "adt N GPUs": the same command on N GPUs (the placement then runs one worker per GPU);
- "DDP 1 GPU", "DDP N GPUs": `torchrun -m bench.ddp --epochs E`, DDP with adt's default recipe
  (see bench/ddp.py; peak LR 0.05 x N for the N-times larger global batch).
Each command is timed from just before it starts to its exit, so start-up, data checks,
validation and checkpoints all count, as a user would see them.

Reading the table: images/s is the steady training rate (adt: bench.throughput.summarize over
events.jsonl; DDP: the median epoch); scaling eff. = images/s at N / (N x images/s at 1) of the
same system; adt/DDP compares images/s at the same N. "t to 1-GPU acc" is the wall time at which
the run's validation accuracy first reaches adt 1 GPU's final accuracy (linear between
validations), also as a fraction of adt 1 GPU's whole wall time: the question "how much sooner
do N GPUs get me what one GPU gets me?". The targets below the table are for N = 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.throughput import ensure_data, machine, summarize

ROOT = Path(__file__).resolve().parent.parent
Row = dict[str, Any]
Curve = list[tuple[float, float]]  # (wall seconds since the command started, val acc)


# ---- pure helpers: what the table is computed from (tested in tests/test_scaling_smoke.py) ----

def time_to_reach(curve: Curve, target: float) -> float | None:
    """Wall seconds at which the curve first reaches `target`, linear between validations; None if
    never. Nothing is assumed before the first validation: reached there, its time counts."""
    previous: tuple[float, float] | None = None
    for seconds, acc in curve:
        if acc >= target:
            if previous is None or acc <= previous[1]:
                return seconds
            t0, a0 = previous
            return t0 + (seconds - t0) * (target - a0) / (acc - a0)
        previous = (seconds, acc)
    return None


def rate(row: Row | None) -> float | None:
    return row["images_per_s"] if row and row.get("images_per_s") else None


def find(rows: list[Row], system: str, n: int) -> Row | None:
    return next((r for r in rows if r["system"] == system and r["n"] == n), None)


def efficiency(rows: list[Row], row: Row) -> float | None:
    """images/s at N over N x images/s at 1 of the same system."""
    one, at_n = rate(find(rows, base_system(row), 1)), rate(row)
    return at_n / (row["n"] * one) if one and at_n else None


def adt_over_ddp(rows: list[Row], row: Row) -> float | None:
    adt, ddp = rate(row), rate(find(rows, "ddp", row["n"]))
    return adt / ddp if base_system(row) == "adt" and adt and ddp else None


def base_system(row: Row) -> str:
    """"adt" for adt's rows with extra flags too ("adt --mps"): they compare with adt at N=1."""
    return row["system"].split(" ")[0]


def curve_of(row: Row | None) -> Curve:
    return [(v["wall_s"], v["acc"]) for v in row["validations"]] if row else []


def final_acc(row: Row | None) -> float | None:
    return row["validations"][-1]["acc"] if row and row["validations"] else None


def reach(rows: list[Row], row: Row) -> tuple[float | None, float | None]:
    """(seconds to adt 1 GPU's final accuracy, that / adt 1 GPU's wall time)."""
    base = find(rows, "adt", 1)
    target = final_acc(base)
    if target is None:
        return None, None
    seconds = time_to_reach(curve_of(row), target)
    wall = base["wall_s"] if base else None
    return seconds, (seconds / wall if seconds is not None and wall else None)


def targets(rows: list[Row], n: int = 2) -> list[tuple[str, float | None, float, bool | None]]:
    """(what, measured, bound, met) for the N=2 goals; measured None where a run is missing."""
    adt1, adtn = find(rows, "adt", 1), find(rows, "adt", n)
    ddp1, ddpn = find(rows, "ddp", 1), find(rows, "ddp", n)

    def ratio(a: Row | None, b: Row | None) -> float | None:
        return rate(a) / rate(b) if rate(a) and rate(b) else None

    acc1, accn = final_acc(adt1), final_acc(adtn)
    gap = 100 * (accn - acc1) if acc1 is not None and accn is not None else None
    ttr = reach(rows, adtn)[1] if adtn else None
    goals = [(f"adt N={n} images/s / adt 1 GPU", ratio(adtn, adt1), 1.85, ">="),
             (f"adt N={n} images/s / DDP N={n}", ratio(adtn, ddpn), 0.95, ">="),
             (f"DDP N={n} images/s / DDP 1", ratio(ddpn, ddp1), 1.8, ">="),
             (f"adt N={n} final acc - adt 1 GPU (points)", gap, -1.0, ">="),
             (f"adt N={n} time to 1-GPU acc / 1-GPU wall", ttr, 0.6, "<=")]
    return [(f"{what} {op} {bound:g}", value, bound,
             None if value is None else (value >= bound if op == ">=" else value <= bound))
            for what, value, bound, op in goals]


def num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[Row]) -> str:
    lines = ["| run | N | images/s | scaling eff. | adt/DDP | final val acc | wall s "
             "| t to 1-GPU acc (s) | × 1-GPU wall | exit |", "|---" * 10 + "|"]
    for r in rows:
        seconds, share = reach(rows, r)
        cells = [r["name"], r["n"], num(rate(r), ",.0f"), num(efficiency(rows, r), ".2f"),
                 num(adt_over_ddp(rows, r), ".2f"), num(final_acc(r), ".1%"), f"{r['wall_s']:.1f}",
                 num(seconds, ".1f"), num(share, ".2f"), r["exit_code"]]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines.append("\ntargets:")
    for what, value, _, met in targets(rows):
        state = "not measured" if met is None else "met" if met else "MISSED"
        lines.append(f"  {what}: {num(value, '.2f')} {state}")
    return "\n".join(lines)


def plot(results: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, a = results["rows"], results["args"]
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=120)
    colours = {n: f"C{i}" for i, n in enumerate(sorted({r["n"] for r in rows}))}  # one per N
    for r in rows:
        curve = curve_of(r)
        if curve:
            ax.plot(*zip(*curve, strict=True), marker=".", color=colours[r["n"]],
                    linestyle="-" if r["system"] == "adt" else "--",
                    label=f"{r['name']} ({r['wall_s']:.0f} s)")
    base = find(rows, "adt", 1)
    if base and final_acc(base) is not None:
        ax.axhline(final_acc(base), color="grey", linestyle=":", linewidth=1,
                   label=f"{base['name']} final")
    ax.set_xlim(left=0)  # start-up counts: the curves begin where each command started
    ax.set_xlabel("wall seconds since the command started")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"{a['model']} {a['image_size']}px, {a['classes']} classes, "
                 f"batch {a['batch']}/GPU, {a['epochs']} epochs "
                 f"({results['machine'].get('gpu', 'CPU')})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


# ---- running the jobs ----

def loaders_per_gpu(args: argparse.Namespace, n: int) -> int:
    """DDP's decoding processes per rank; by default what adt's placement gives a training
    process."""
    if args.loaders_per_gpu:
        return args.loaders_per_gpu
    cpus = os.cpu_count() or 1
    try:
        from engine.placement import loader_processes
    except ImportError:  # an engine without it: the spare cores split over the ranks
        return max(1, (cpus - 1) // n)
    return loader_processes(cpus, n, args.device == "cuda")


def child_env(args: argparse.Namespace, n: int) -> dict[str, str]:
    """This environment unchanged (NCCL_* and all), plus the project on PYTHONPATH and N GPUs."""
    env = dict(os.environ)
    paths = env.get("PYTHONPATH", "").split(os.pathsep)
    if str(ROOT) not in paths:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), *paths]))
    if args.device == "cuda":
        # The first N of the GPUs this process may use (all of them when nothing restricts it).
        visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(visible[:n] if visible else map(str, range(n)))
    return env


def adt_command(args: argparse.Namespace, data: Path, work: Path, n: int, run_id: str) -> list[str]:
    cmd = [sys.executable, "-m", "adt_tui.cli", "run", "--no-ui", "--data", str(data),
           "--model", args.model, "--epochs", str(args.epochs), "--batch-size", str(args.batch),
           "--runs-dir", str(work / "runs"), "--checkpoints-dir", str(work / "ckpt"),
           "--run-id", run_id]
    if args.device == "cpu":  # the CPU smoke must say so; N=1 as one GPU's default: one process
        cmd += ["--device", "cpu", "--workers", str(0 if n == 1 else n)]
    # On GPUs no placement flags: adt's defaults are what is measured.
    return cmd


def ddp_command(args: argparse.Namespace, data: Path, n: int) -> list[str]:
    # torch.distributed.run is torchrun's module: the same launcher, with this interpreter for sure.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
            "-m", "bench.ddp", "--data", str(data), "--model", args.model,
            "--batch", str(args.batch), "--epochs", str(args.epochs),
            "--loader-workers", str(loaders_per_gpu(args, n)),
            "--device", args.device]


def run_logged(cmd: list[str], env: dict[str, str], log: Path,
               timeout: float) -> tuple[int, float, float]:
    """Run to exit or timeout, output to `log`: (exit code, Unix start, wall seconds); the code is
    124 if it was killed at the timeout."""
    with open(log, "w") as out:
        out.write(f"$ {shlex.join(cmd)}\n")
        out.flush()
        started, clock = time.time(), time.monotonic()
        # Its own session: a hung job (NCCL, a stuck worker) is stopped with all its processes.
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            code = 124
        wall = time.monotonic() - clock
        out.write(f"\n[bench.scaling] exit {code} after {wall:.1f} s\n")
    return code, started, wall


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (adt and torchrun stop their children on it), then SIGKILL."""
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def adt_rate(events: list[dict[str, Any]]) -> float | None:
    """The steady in-epoch images/s (bench.throughput.summarize). A run too short for its warm-up
    intervals (the CPU smoke) gets its epochs' mean rate instead, validation pauses left out."""
    steady = summarize(events, 0, 4)["images_per_s"] if events else 0.0
    ends = [e for e in events if e["kind"] == "epoch_end"]
    joined = next((e["t"] for e in events if e["kind"] == "worker_join"), None)
    if steady or not ends or joined is None:
        return steady or None
    last = ends[-1]
    paused = sum(e["seconds"] for e in events if e["kind"] == "validation" and e["t"] < last["t"])
    return round(last["samples_seen"] / (last["t"] - joined - paused), 1)


def adt_run(args: argparse.Namespace, data: Path, work: Path, n: int, extra: str = "") -> Row:
    from engine.events import read_events

    run_id = f"scaling-adt-n{n}-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = adt_command(args, data, work, n, run_id) + shlex.split(extra)
    log = work / "logs" / f"{run_id}.txt"
    code, started, wall = run_logged(cmd, child_env(args, n), log, args.run_timeout)
    events_path = work / "runs" / run_id / "events.jsonl"
    events = list(read_events(events_path)) if events_path.is_file() else []
    vals = [validation(e, started) for e in events if e["kind"] == "validation"]
    return {"system": " ".join(["adt", extra]).strip(), "n": n, "exit_code": code, "wall_s": round(wall, 1), "run_id": run_id,
            "images_per_s": adt_rate(events), "validations": vals, "command": shlex.join(cmd),
            "log": str(log)}


def validation(event: dict[str, Any], started: float) -> dict[str, Any]:
    """One validation: samples seen, accuracy, wall seconds since the command started."""
    return {"samples_seen": event["samples_seen"], "acc": event["acc"],
            "wall_s": round(event["t"] - started, 2)}


def ddp_lines(text: str) -> list[dict[str, Any]]:
    """bench.ddp's JSON lines in a log, also where a launcher prefixed them (torchrun --tee); a
    line cut off by a kill is left out."""
    marker, found = '{"bench": "ddp"', []
    for line in text.splitlines():
        if marker in line:
            try:
                found.append(json.loads(line[line.index(marker):]))
            except json.JSONDecodeError:
                continue
    return found


def ddp_run(args: argparse.Namespace, data: Path, work: Path, n: int) -> Row:
    cmd = ddp_command(args, data, n)
    log = work / "logs" / f"scaling-ddp-n{n}-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    code, started, wall = run_logged(cmd, child_env(args, n), log, args.run_timeout)
    lines = ddp_lines(log.read_text())
    vals = [{**validation(e, started), "images_per_s_epoch": e["images_per_s_epoch"]}
            for e in lines if "epoch" in e]
    rates = [v["images_per_s_epoch"] for v in vals]
    # The median epoch: the first carries CUDA start-up and cudnn autotuning.
    return {"system": "ddp", "n": n, "exit_code": code, "wall_s": round(wall, 1),
            "images_per_s": round(statistics.median(rates), 1) if rates else None,
            "loader_workers": loaders_per_gpu(args, n), "validations": vals,
            "command": shlex.join(cmd), "log": str(log)}


def counts(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[int]:
    """1 and every N of --gpus-list that this machine has GPUs for."""
    wanted = sorted({1, *(int(n) for n in args.gpus_list.split(",") if n.strip())})
    if args.device == "cpu":
        return wanted
    import torch

    gpus = torch.cuda.device_count()
    if not gpus:
        parser.error("--device cuda, but torch sees no GPU. "
                     "Fix: run on a GPU machine or pass --device cpu.")
    if skipped := [n for n in wanted if n > gpus]:
        print(f"skipping N={skipped}: only {gpus} GPU(s)", flush=True)
    return [n for n in wanted if n <= gpus]


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    p = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--classes", type=int, default=200)
    p.add_argument("--train-samples", type=int, default=50_000)
    p.add_argument("--val-samples", type=int, default=2_000)
    p.add_argument("--shards", type=int, default=48,
                   help="train shards; 48 split evenly among 1, 2 or 4 GPUs x 12 readers")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=256, help="per GPU (per adt worker, per DDP rank)")
    p.add_argument("--gpus-list", default="2", help="N values besides 1; capped by the GPU count")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--loaders-per-gpu", type=int, default=0,
                   help="DDP decoding processes per rank (0: as many as adt's placement gives "
                   "a training process)")
    p.add_argument("--run-timeout", type=float, default=240.0,
                   help="seconds per run before it is killed (its row then says exit 124)")
    p.add_argument("--adt-variant", action="append", default=[], metavar="FLAGS",
                   help="one more adt run at the largest N with these flags, e.g. '--mps' "
                   "(repeatable; rows of their own, left out of the targets)")
    p.add_argument("--workdir", default="bench-out/scaling")
    p.add_argument("--out", default="",
                   help="JSON results (default WORKDIR/scaling.json); the PNG goes beside it")
    p.add_argument("--plot", default="", metavar="JSON",
                   help="only redraw table and PNG from a results file")
    return p.parse_args(argv), p


def report(results: dict[str, Any], out: Path) -> None:
    print(f"\n{results['machine']}\n{table(results['rows'])}")
    try:
        plot(results, out.with_suffix(".png"))
        print(f"wrote {out} and {out.with_suffix('.png')}")
    except ImportError:
        print(f"wrote {out} (no matplotlib here: redraw with --plot {out})")


def main(argv: list[str] | None = None) -> int:
    args, parser = parse(argv)
    if args.plot:
        report(json.loads(Path(args.plot).read_text()), Path(args.plot))
        return 0
    ns = counts(args, parser)
    work = Path(args.workdir).resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    out = Path(args.out or work / "scaling.json").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    # The folder names the shard and validation counts too: ensure_data reuses what it finds.
    folder = work / "data" / f"k{args.shards}-v{args.val_samples}"
    data = ensure_data(folder, args.classes, args.image_size, args.train_samples, args.val_samples,
                       args.shards)
    print(f"data ready in {time.monotonic() - began:.0f} s: {data}", flush=True)
    results: dict[str, Any] = {"machine": machine(), "args": vars(args), "data": str(data),
                               "rows": []}
    jobs = ([("adt", n, "") for n in ns] + [("ddp", n, "") for n in ns]
            + [("adt", max(ns), flags) for flags in args.adt_variant])
    for system, n, extra in jobs:
        unit = "GPU" if args.device == "cuda" else "proc"
        name = f"{'adt' if system == 'adt' else 'DDP'} {n} {unit}{'s' if n > 1 else ''} {extra}".strip()
        print(f"== {name}", flush=True)
        row = adt_run(args, data, work, n, extra) if system == "adt" else ddp_run(args, data, work, n)
        results["rows"].append({"name": name, **row})
        accs = [round(v["acc"], 3) for v in row["validations"]]
        print(f"   exit {row['exit_code']}, {row['wall_s']} s, {row['images_per_s']} img/s, "
              f"val acc {accs}", flush=True)
        out.write_text(json.dumps(results, indent=1))  # after every run: a cut-off call keeps rows
    results["seconds"] = round(time.monotonic() - began, 1)
    out.write_text(json.dumps(results, indent=1))
    report(results, out)
    print(f"whole benchmark: {results['seconds']} s")
    return 0 if all(r["exit_code"] == 0 for r in results["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
