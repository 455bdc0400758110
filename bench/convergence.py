"""Convergence, side by side in one invocation: validation accuracy against samples seen for the
single process and for async N workers under each update rule, same epochs, same samples.

    python -m bench.convergence --model resnet18 --image-size 64 --classes 200 --batch 256 \\
        --train-samples 60000 --epochs 10 --device cuda --ps-device cuda --workers 2,4
    python -m bench.convergence --plot bench-out/convergence.json   # redraw table + PNG only

Every row is a real `adt run --no-ui` job with the engine's defaults (LR schedule, augmentation)
unless `--set` changes them. Prints a table: final and best val acc, samples to reach 50% / 90% of
the single process's final accuracy (as a ratio to its own), images/s. Writes JSON and a PNG.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path
from typing import Any

from adt_tui.headless import run_headless
from engine.config import RunConfig
from engine.events import read_events

from .throughput import ensure_data, machine, summarize


def samples_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """Samples at which the curve first reaches `target`, interpolated between evaluations."""
    previous = (0, 0.0)
    for samples, acc in curve:
        if acc >= target:
            s0, a0 = previous
            return s0 + (samples - s0) * (target - a0) / (acc - a0) if acc > a0 else samples
        previous = (samples, acc)
    return None


def run_one(base: dict[str, Any], name: str, overrides: dict[str, Any], loader_total: int,
            logdir: Path) -> dict[str, Any]:
    workers = overrides["workers"]
    config = RunConfig(**{**base, **overrides,
                          "loader_workers": max(1, loader_total // max(1, workers))}).validate()
    out = io.StringIO()
    start = time.monotonic()
    code = run_headless(config, out)
    (logdir / f"{config.run_id}.txt").write_text(out.getvalue())
    events = list(read_events(Path(config.runs_dir) / config.run_id / "events.jsonl"))
    vals = [e for e in events if e["kind"] == "validation"]
    ps = [e for e in events if e["kind"] == "ps_metrics" and e.get("staleness", {}).get("p50") is not None]
    speed = summarize(events, 0, 4)
    return {"name": name, **overrides, "exit_code": code, "run_id": config.run_id,
            "seconds": round(time.monotonic() - start, 1), "images_per_s": speed["images_per_s"],
            "curve": [(v["samples_seen"], v["acc"]) for v in vals],
            "val_loss": [(v["samples_seen"], v["loss"]) for v in vals],
            "staleness_p50": sorted(e["staleness"]["p50"] for e in ps)[len(ps) // 2] if ps else None,
            "alerts": [e["code"] for e in events if e["kind"] == "alert"]}


def table(rows: list[dict[str, Any]]) -> str:
    single = next(r for r in rows if r["workers"] == 0)
    final = single["curve"][-1][1]
    base_speed = single["images_per_s"] or None
    reach = {f: samples_to_reach(single["curve"], f * final) for f in (0.5, 0.9)}
    lines = ["| run | final val acc | best | samples to 50% (× single) | samples to 90% (× single) "
             "| images/s (× single) | staleness p50 | alerts |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = []
        for f in (0.5, 0.9):
            s = samples_to_reach(r["curve"], f * final)
            cells.append("never" if s is None else f"{s:,.0f} ({s / reach[f]:.2f})" if reach[f] else f"{s:,.0f}")
        speed = f"{r['images_per_s']:,.0f}" + (f" ({r['images_per_s'] / base_speed:.2f})" if base_speed else "")
        lines.append(f"| {r['name']} | {r['curve'][-1][1]:.1%} | {max(a for _, a in r['curve']):.1%} | "
                     f"{cells[0]} | {cells[1]} | {speed} | {r['staleness_p50'] if r['workers'] else '-'} | "
                     f"{', '.join(sorted(set(r['alerts']))) or '-'} |")
    return "\n".join(lines)


def plot(results: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=120)
    for r in rows:
        style = {"color": "black", "linewidth": 2.2} if r["workers"] == 0 else {"linewidth": 1.2}
        ax.plot([s for s, _ in r["curve"]], [a for _, a in r["curve"]], marker=".", label=r["name"], **style)
    classes = results["args"]["classes"]
    ax.axhline(1 / classes, color="grey", linestyle=":", linewidth=1, label=f"chance (1/{classes})")
    ax.set_xlabel("training samples seen")
    ax.set_ylabel("validation accuracy")
    a = results["args"]
    ax.set_title(f"{a['model']} {a['image_size']}px, {classes} classes, batch {a['batch']}, "
                 f"{a['epochs']} epochs ({results['machine'].get('gpu', 'CPU')})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(png)


def runs_to_do(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    runs = [("single process (--workers 0)", {"workers": 0})]
    for n in [int(x) for x in args.workers.split(",") if x]:
        for item in args.rules.split(","):
            rule, _, forced = item.partition("+")  # "rule+overlap": this rule with overlap only
            modes = [True] if forced == "overlap" else {"off": [False], "on": [True], "both": [False, True]}[args.overlap]
            for overlap in modes:
                name = f"N={n} {rule}" + (" --overlap" if overlap else "")
                runs.append((name, {"workers": n, "update_rule": rule, "overlap": overlap}))
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.convergence", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cnn")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train-samples", type=int, default=6000)
    p.add_argument("--val-samples", type=int, default=1000)
    p.add_argument("--workers", default="2,4", help="async worker counts (the single process always runs)")
    p.add_argument("--rules", default="async-momentum,dc-asgd,local-sgd,lr/staleness,sgd",
                   help="update rules, comma-separated; RULE+overlap runs that rule with --overlap")
    p.add_argument("--overlap", choices=("off", "on", "both"), default="off")
    p.add_argument("--skip-single", action="store_true", help="reuse the single row of --merge")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a RunConfig setting for every run, e.g. --set lr=0.1")
    p.add_argument("--device", default="cpu")
    p.add_argument("--ps-device", default="cpu")
    p.add_argument("--loader-total", type=int, default=2, help="decoding processes per run, split among workers")
    p.add_argument("--workdir", default="bench-out")
    p.add_argument("--out", default="", help="JSON results (default WORKDIR/convergence.json)")
    p.add_argument("--merge", default="", help="add the rows of an earlier results JSON first")
    p.add_argument("--plot", default="", metavar="JSON", help="only redraw table and PNG from a results file")
    args = p.parse_args(argv)

    if args.plot:
        results = json.loads(Path(args.plot).read_text())
        print(table(results["rows"]))
        plot(results, Path(args.plot).with_suffix(".png"))
        print(f"wrote {Path(args.plot).with_suffix('.png')}")
        return 0
    work = Path(args.workdir).resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    data = ensure_data(work / "data", args.classes, args.image_size, args.train_samples,
                       args.val_samples, max(8, args.loader_total * 2))
    base: dict[str, Any] = dict(data=str(data), model=args.model, batch_size=args.batch,
                                epochs=args.epochs, device=args.device, ps_device=args.ps_device,
                                runs_dir=str(work / "runs"), checkpoints_dir=str(work / "checkpoints"))
    for item in args.set:
        key, value = item.split("=", 1)
        base[key] = json.loads(value) if value[:1] in "0123456789-.tf[{" else value
    rows = json.loads(Path(args.merge).read_text())["rows"] if args.merge else []
    out = Path(args.out or work / "convergence.json")
    for name, overrides in runs_to_do(args):
        if overrides["workers"] == 0 and args.skip_single:
            continue
        print(f"== {name}", flush=True)
        rows.append(run_one(base, name, overrides, args.loader_total, work / "logs"))
        r = rows[-1]
        print(f"   exit {r['exit_code']}, {r['seconds']} s, {r['images_per_s']} img/s, val acc "
              f"{[round(a, 3) for _, a in r['curve']]}, alerts {r['alerts']}", flush=True)
        results = {"machine": machine(), "args": vars(args), "base": base, "rows": rows}
        out.write_text(json.dumps(results, indent=1))  # after every run: a cut-off call keeps its rows
    print(f"\n{results['machine']}\nargs: {vars(args)}\n")
    print(table(rows))
    try:
        plot(results, out.with_suffix(".png"))
        print(f"wrote {out} and {out.with_suffix('.png')}")
    except ImportError:
        print(f"wrote {out} (no matplotlib here: redraw with --plot {out})")
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
