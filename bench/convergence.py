"""Convergence, side by side in one invocation: validation accuracy against samples seen for the
single process and for async N workers under each update rule, same epochs, same samples.

    python -m bench.convergence --model resnet18 --image-size 64 --classes 200 --batch 256 \\
        --train-samples 60000 --epochs 10 --device auto --workers 2,4 --rules default --seeds 0,1,2
    python -m bench.convergence --plot bench-out/convergence.json   # redraw table + PNG only

Every row is a real `adt run --no-ui` job with the engine's defaults (LR schedule, augmentation,
the update rule for its worker count: `--rules default`) unless `--set` changes them. Each
configuration runs once per seed. Prints a table: the mean final val acc with its min-max over
the seeds, samples to reach 50% / 90% of the single process's mean final accuracy (as a ratio
to its own), images/s. Writes JSON and a PNG (the mean curve of each configuration).
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
from engine.rule_registry import rule_for

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


def grouped(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The runs of each configuration (one per seed), in the order they first ran."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["name"], []).append(r)
    return groups


def mean_curve(runs: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """The seeds' curves averaged point by point (they validate at the same epochs)."""
    length = min(len(r["curve"]) for r in runs)
    return [(sum(r["curve"][i][0] for r in runs) / len(runs), sum(r["curve"][i][1] for r in runs) / len(runs))
            for i in range(length)]


def config_value(text: str) -> Any:
    """A `--set` value: JSON where it parses (0.1, true, [1]), else the text itself (2ep, cosine)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def is_single(runs: list[dict[str, Any]]) -> bool:
    """The single process at the benchmark's batch (not a --sync row, one process too)."""
    return runs[0]["workers"] == 0 and runs[0]["name"].startswith("single")


def table(rows: list[dict[str, Any]]) -> str:
    groups = grouped(rows)
    # The reference: the single process (or, in a file without one, the first configuration).
    singles = next((runs for runs in groups.values() if is_single(runs)), next(iter(groups.values())))
    single_curve = mean_curve(singles)
    final = single_curve[-1][1]
    base_speed = sum(r["images_per_s"] for r in singles) / len(singles) or None
    reach = {f: samples_to_reach(single_curve, f * final) for f in (0.5, 0.9)}
    lines = ["| run | seeds | final val acc, mean (min–max) | vs single | samples to 50% (× single) "
             "| samples to 90% (× single) | images/s (× single) | staleness p50 | alerts |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, runs in groups.items():
        finals = [r["curve"][-1][1] for r in runs]
        mean = sum(finals) / len(finals)
        curve = mean_curve(runs)
        cells = []
        for f in (0.5, 0.9):
            s = samples_to_reach(curve, f * final)
            cells.append("never" if s is None else f"{s:,.0f} ({s / reach[f]:.2f})" if reach[f] else f"{s:,.0f}")
        speed = sum(r["images_per_s"] for r in runs) / len(runs)
        speed_cell = f"{speed:,.0f}" + (f" ({speed / base_speed:.2f})" if base_speed else "")
        stale = sorted(r["staleness_p50"] for r in runs if r["staleness_p50"] is not None)
        alerts = sorted({a for r in runs for a in r["alerts"]})
        lines.append(f"| {name} | {len(runs)} | {mean:.1%} ({min(finals):.1%}–{max(finals):.1%}) | "
                     f"{100 * (mean - final):+.1f} | {cells[0]} | {cells[1]} | {speed_cell} | "
                     f"{stale[len(stale) // 2] if runs[0]['workers'] and stale else '-'} | "
                     f"{', '.join(alerts) or '-'} |")
    return "\n".join(lines)


def plot(results: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=120)
    for name, runs in grouped(results["rows"]).items():
        style = {"color": "black", "linewidth": 2.2} if is_single(runs) else {"linewidth": 1.2}
        curve = mean_curve(runs)
        line, = ax.plot([s for s, _ in curve], [a for _, a in curve], marker=".",
                        label=f"{name} ({len(runs)} seeds)", **style)
        if len(runs) > 1:  # the seeds' spread
            length = len(curve)
            low = [min(r["curve"][i][1] for r in runs) for i in range(length)]
            high = [max(r["curve"][i][1] for r in runs) for i in range(length)]
            ax.fill_between([s for s, _ in curve], low, high, color=line.get_color(), alpha=0.15)
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
    """(name, overrides) of every run: each configuration once per seed."""
    configs = [] if args.skip_single else [("single process (--workers 0)", {"workers": 0})]
    lr = next((float(v) for k, _, v in (item.partition("=") for item in args.set) if k == "lr"), RunConfig().lr)
    for n in [int(x) for x in args.sync.split(",") if x]:  # what N synchronous workers reach
        configs.append((f"sync N={n} (one process, batch and LR x{n})",
                        {"workers": 0, "batch_size": args.batch * n, "lr": lr * n}))
    for n in [int(x) for x in args.workers.split(",") if x]:
        for item in args.rules.split(","):
            rule, _, forced = item.partition("+")  # "rule+overlap": this rule with overlap only
            modes = [True] if forced == "overlap" else {"off": [False], "on": [True], "both": [False, True]}[args.overlap]
            for overlap in modes:
                shown = f"default ({rule_for(n)})" if rule == "default" else rule
                name = f"N={n} {shown}" + (" --overlap" if overlap else "")
                configs.append((name, {"workers": n, "update_rule": "auto" if rule == "default" else rule,
                                       "overlap": overlap}))
    return [(name, {**overrides, "seed": seed}) for name, overrides in configs
            for seed in [int(x) for x in args.seeds.split(",")]]


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
    p.add_argument("--sync", default="", metavar="N,...",
                   help="also run what N synchronous workers (DDP) reach at equal epochs: one process at N "
                        "times the batch and, by the linear scaling rule, the LR")
    p.add_argument("--overlap", choices=("off", "on", "both"), default="off")
    p.add_argument("--seeds", default="0", help="seeds, comma-separated: every configuration runs once per seed")
    p.add_argument("--mps", action="store_true", help="async runs share their GPU through MPS (--mps)")
    p.add_argument("--skip-single", action="store_true", help="reuse the single rows of --merge")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a RunConfig setting for every run, e.g. --set lr=0.1")
    p.add_argument("--device", default="cpu")
    p.add_argument("--ps-device", default="cpu")
    p.add_argument("--loader-total", type=int, default=2, help="decoding processes per run, split among workers")
    p.add_argument("--workdir", default="bench-out")
    p.add_argument("--out", default="", help="JSON results (default WORKDIR/convergence.json)")
    p.add_argument("--merge", default="", help="add the rows of earlier results JSONs first (comma-separated)")
    p.add_argument("--plot", default="", metavar="JSON", help="only redraw table and PNG from results files "
                   "(comma-separated; with --out, the merged results go there)")
    args = p.parse_args(argv)

    if args.plot:  # one results file, or several to merge: the first gives machine and args
        files = [json.loads(Path(path).read_text()) for path in args.plot.split(",")]
        results = {**files[0], "rows": [r for f in files for r in f["rows"]]}
        png = Path(args.out or args.plot.split(",")[0]).with_suffix(".png")
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1))
        print(table(results["rows"]))
        plot(results, png)
        print(f"wrote {png}")
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
        base[key] = config_value(value)
    rows = [r for path in args.merge.split(",") if path for r in json.loads(Path(path).read_text())["rows"]]
    out = Path(args.out or work / "convergence.json")
    for name, overrides in runs_to_do(args):
        if args.mps and overrides["workers"] > 1:
            overrides = {**overrides, "mps": True}
        print(f"== {name} seed {overrides['seed']}", flush=True)
        rows.append(run_one(base, name, overrides, args.loader_total, work / "logs"))
        r = rows[-1]
        print(f"   exit {r['exit_code']}, {r['seconds']} s, {r['images_per_s']} img/s, val acc "
              f"{[round(a, 3) for _, a in r['curve']]}, alerts {r['alerts']}", flush=True)
        if r["exit_code"]:  # say why here: the run's own output is under WORKDIR/logs
            print("   | " + "\n   | ".join((work / "logs" / f"{r['run_id']}.txt").read_text().splitlines()[-15:]))
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
