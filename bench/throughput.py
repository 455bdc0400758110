"""Throughput, side by side in one invocation: a raw training loop (the ceiling), the
single-process baseline and async PS with N workers, adt's transport against the plain one (fp32,
one tensor per parameter, pull + push).

    python -m bench.throughput --model resnet18 --image-size 64 --batch 256 --workers 0,1,2,4 \
        --variants eager,compile --repeats 3

Every adt configuration is a real `adt run --no-ui` job (real processes, RPC, WebDataset shards);
numbers come from its events.jsonl. The raw loop is the same model, batch, dtype and memory format
on synthetic tensors already on the device: no loader, no PS, no metrics. Each row is the median
of `--repeats` runs with their min-max spread, and a ratio to the raw loop of its variant.
Prints a table and writes JSON next to it.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from adt_tui.headless import run_headless
from engine.config import RunConfig
from engine.events import read_events

WARMUP_INTERVALS = 3  # ps_metrics intervals skipped: process start, CUDA init, cudnn autotuning


def ensure_data(root: Path, classes: int, size: int, train: int, val: int, shards: int) -> Path:
    from engine.synth import write_synthetic

    path = root / f"synth-c{classes}-s{size}-n{train}"
    if not (path / "val" / "manifest.json").exists():
        write_synthetic(path, num_classes=classes, image_size=size, train_samples=train,
                        val_samples=val, train_shards=shards, val_shards=4,
                        jobs=max(1, (os.cpu_count() or 2) - 1))
    return path


def summarize(events: list[dict[str, Any]], num_params: int, transfer_bytes: int) -> dict[str, Any]:
    """Aggregate images/s over the steady intervals, and the step-time breakdown, from events."""
    ps = [e for e in events if e["kind"] == "ps_metrics"][WARMUP_INTERVALS:]
    steps = [(b["samples_seen"] - a["samples_seen"], b["t"] - a["t"])
             for a, b in itertools.pairwise(ps) if b["t"] > a["t"] and b["samples_seen"] > a["samples_seen"]]
    # Whole intervals are few batches on a slow machine, so one interval's rate is coarse: sum the
    # samples and seconds of all steady intervals, leaving out the pauses (validation, epoch ends).
    typical = statistics.median(n / dt for n, dt in steps) if steps else 0
    steady_steps = [(n, dt) for n, dt in steps if n / dt > 0.5 * typical]
    metrics = [e for e in events if e["kind"] == "worker_metrics"]
    per_worker: dict[int, list[dict]] = {}
    for e in metrics:
        per_worker.setdefault(e["worker"], []).append(e)
    steady = [e for rows in per_worker.values() for e in rows[WARMUP_INTERVALS:]] or metrics

    def med(field: str, key: str) -> float | None:
        values = [e[field][key] for e in steady if key in e.get(field, {})]
        return round(statistics.median(values), 2) if values else None

    keys = ("data", "compute", "push_pull", "pull")
    timing = {k: {"p50": med("timing", k), "p95": med("timing_p95", k)} for k in keys}
    step = sum(v["p50"] or 0 for v in timing.values())
    comm = (timing["push_pull"]["p50"] or 0) + (timing["pull"]["p50"] or 0)
    applies = [e["apply_ms"] for e in ps if e.get("apply_ms") is not None]
    vals = [e for e in events if e["kind"] == "validation"]
    return {
        "images_per_s": round(sum(n for n, _ in steady_steps) / sum(dt for _, dt in steady_steps), 1)
        if steady_steps else 0.0,
        "timing_ms": timing,
        "comm_share": round(comm / step, 3) if step else None,
        "apply_ms": round(statistics.median(applies), 3) if applies else None,
        "mb_per_step": round(2 * num_params * transfer_bytes / 1e6, 1),
        "val_acc": vals[-1]["acc"] if vals else None,
        "samples_seen": vals[-1]["samples_seen"] if vals else None,
    }


def raw_loop(model_name: str, classes: int, size: int, batch: int, device: str, compiled: bool,
             steps: int) -> float:
    """images/s of a plain loop: forward, backward, SGD step; the same autocast, memory format
    and input normalisation as adt's worker."""
    import torch
    from torch import nn

    from engine.models import build_model, normalize

    dev = torch.device(device)
    model = build_model(model_name, classes).to(dev, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    forward = torch.compile(model) if compiled else model
    loss_fn = nn.CrossEntropyLoss()
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=dev)
    labels = torch.randint(0, classes, (batch,), device=dev)

    def step() -> None:
        optimizer.zero_grad(set_to_none=False)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = loss_fn(forward(normalize(images).contiguous(memory_format=torch.channels_last)).float(), labels)
        loss.backward()
        optimizer.step()

    for _ in range(max(10, steps // 5)):  # compilation, cudnn autotuning
        step()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return batch * steps / (time.perf_counter() - start)


def run_one(base: dict[str, Any], workers: int, transport: str, updates: int, loader_total: int,
            logdir: Path) -> dict[str, Any]:
    """One real job; each configuration gets the same number of decoding processes in total."""
    loaders = max(1, loader_total // max(1, workers))
    config = RunConfig(**{**base, "workers": workers, "transport": transport, "max_updates": updates,
                          "loader_workers": loaders}).validate()
    out = io.StringIO()
    start = time.monotonic()
    code = run_headless(config, out)
    (logdir / f"{config.run_id}.txt").write_text(out.getvalue())
    events = list(read_events(Path(config.runs_dir) / config.run_id / "events.jsonl"))
    from engine.models import build_model

    num_classes = next(e for e in events if e["kind"] == "run_start")["num_classes"]
    num_params = sum(p.numel() for p in build_model(config.model, num_classes).parameters())
    row = summarize(events, num_params, 2 if config.transfer_dtype == "bf16" else 4)
    row.update(workers=workers, transport=transport if workers else "-", exit_code=code, updates=updates,
               loader_workers=loaders,
               run_id=config.run_id, seconds=round(time.monotonic() - start, 1))
    return row


def repeated(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run by images/s, with the spread of all of them."""
    ordered = sorted(runs, key=lambda r: r["images_per_s"])
    row = dict(ordered[len(ordered) // 2])
    row["spread"] = [ordered[0]["images_per_s"], ordered[-1]["images_per_s"]]
    row["exit_code"] = max(r["exit_code"] for r in runs)
    return row


def print_table(rows: list[dict[str, Any]]) -> str:
    """One line per row: images/s (median and spread), x raw loop and x single process of the same
    variant, and adt's step-time breakdown."""
    def ref(variant: str, workers: Any) -> float | None:
        if workers == "raw":
            variant = variant.split("+")[0]  # eager+mps against the raw eager loop
        return next((r["images_per_s"] for r in rows if r["variant"] == variant and r["workers"] == workers), None)

    head = (f"{'variant':>11} {'workers':>7} {'transport':>9} {'img/s':>9} {'spread':>13} {'x raw':>6} {'x base':>7} "
            f"{'data':>11} {'compute':>11} "
            f"{'push+pull':>11} {'pull':>11} {'comm %':>7} {'apply':>7} {'MB/step':>8} {'val acc':>7}")
    lines = [head, "-" * len(head)]

    def cell(t: dict[str, Any]) -> str:
        return "-" if t["p50"] is None else f"{t['p50']:.1f}/{t['p95']:.1f}"

    for r in rows:
        raw, base = ref(r["variant"], "raw"), ref(r["variant"], 0)
        spread = "{:.0f}-{:.0f}".format(*r["spread"]) if r.get("spread") else "-"
        if r["workers"] == "raw":
            lines.append(f"{r['variant']:>11} {'raw':>7} {'-':>9} {r['images_per_s']:>9.0f} {spread:>13} {1:>6.2f}")
            continue
        t = r["timing_ms"]
        x_raw = f"{r['images_per_s'] / raw:.2f}" if raw else "-"
        ratio = f"{r['images_per_s'] / base:.2f}" if base else "-"
        share = f"{100 * r['comm_share']:.1f}" if r["comm_share"] is not None and r["workers"] else "-"
        acc = f"{r['val_acc']:.3f}" if r["val_acc"] is not None else "-"
        lines.append(f"{r['variant']:>11} {r['workers']:>7} {r['transport']:>9} {r['images_per_s']:>9.0f} "
                     f"{spread:>13} {x_raw:>6} {ratio:>7} "
                     f"{cell(t['data']):>11} {cell(t['compute']):>11} {cell(t['push_pull']):>11} "
                     f"{cell(t['pull']):>11} {share:>7} {r['apply_ms'] or 0:>7.2f} "
                     f"{(r['mb_per_step'] if r['workers'] else 0):>8} {acc:>7}")
    lines.append("timings: median/p95 ms per step; push+pull is one round trip for 'flat', the push "
                 "alone for 'plain'; comm % = (push+pull + pull) / step")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import torch

    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cnn")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", default="0,1,2", help="comma list; 0 is the single-process baseline")
    p.add_argument("--transports", default="flat,plain")
    p.add_argument("--device", default="cpu")
    p.add_argument("--ps-device", default="cpu")
    p.add_argument("--transfer-dtype", default="fp32")
    p.add_argument("--loader-total", type=int, default=2,
                   help="decoding processes per configuration, split among its workers")
    p.add_argument("--updates", type=int, default=200, help="updates per configuration")
    p.add_argument("--plain-updates", type=int, default=100, help="the plain transport is slow: fewer")
    p.add_argument("--train-samples", type=int, default=6000)
    p.add_argument("--val-samples", type=int, default=1000)
    p.add_argument("--variants", default="eager", help="comma list of eager, compile (torch.compile), "
                   "and either with +mps (the job's own MPS daemon: adt run --mps)")
    p.add_argument("--repeats", type=int, default=1, help="runs per row; the table shows the median and spread")
    p.add_argument("--raw-steps", type=int, default=200, help="timed steps of the raw loop (0: no raw rows)")
    p.add_argument("--overlap", action="store_true", help="push step k while step k+1 computes")
    p.add_argument("--workdir", default="bench-out")
    p.add_argument("--out", default="", help="JSON results file (default WORKDIR/throughput.json)")
    args = p.parse_args(argv)

    work = Path(args.workdir).resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    counts = [int(n) for n in args.workers.split(",")]
    shards = max(8, args.loader_total * 2)
    data = ensure_data(work / "data", args.classes, args.image_size, args.train_samples,
                       args.val_samples, shards)
    base = dict(data=str(data), model=args.model, batch_size=args.batch, device=args.device,
                ps_device=args.ps_device, transfer_dtype=args.transfer_dtype,
                overlap=args.overlap, lr=0.05, epochs=1000,
                runs_dir=str(work / "runs"), checkpoints_dir=str(work / "checkpoints"), log_interval=1.0)
    rows = []
    for variant in args.variants.split(","):
        compiled, mps = variant.startswith("compile"), variant.endswith("+mps")
        if args.raw_steps and not mps:
            print(f"== {variant} raw loop", flush=True)
            rates = sorted(raw_loop(args.model, args.classes, args.image_size, args.batch, args.device,
                                    compiled, args.raw_steps) for _ in range(args.repeats))
            rows.append({"variant": variant, "workers": "raw", "images_per_s": round(rates[len(rates) // 2], 1),
                         "spread": [round(rates[0], 1), round(rates[-1], 1)], "exit_code": 0})
            print(print_table(rows[-1:]).splitlines()[2], flush=True)
        for n in counts:
            for transport in (["flat"] if n == 0 else args.transports.split(",")):
                updates = args.plain_updates if transport == "plain" else args.updates
                print(f"== {variant} workers={n} transport={transport} updates={updates}", flush=True)
                runs = [run_one({**base, "compile": compiled, "mps": mps}, n, transport, updates, args.loader_total,
                                work / "logs") for _ in range(args.repeats)]
                rows.append({**repeated(runs), "variant": variant})
                print(print_table([r for r in rows if r["workers"] in ("raw", 0)] + rows[-1:]).splitlines()[-2],
                      flush=True)
    table = print_table(rows)
    info = machine()
    print(f"\n{info}\nargs: {vars(args)}\n{table}")
    out = Path(args.out or work / "throughput.json")
    out.write_text(json.dumps({"machine": info, "args": vars(args), "rows": rows}, indent=1))
    print(f"results: {out}")
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
