"""Time to accuracy on the built-in data: validation accuracy against samples seen for the
single-process baseline and async PS with N workers under each staleness policy.

    python -m bench.time_to_accuracy --workers 4 --epochs 4 --eval-every 20

Writes JSON and a PNG (matplotlib), and prints, for each async run, how many samples it needed
to reach the baseline's final accuracy, as a ratio to the baseline's.
"""

from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path
from typing import Any

from adt_tui.headless import run_headless
from engine.config import STALENESS_POLICIES, RunConfig
from engine.events import read_events


def curve(config: RunConfig) -> list[tuple[int, float]]:
    run_headless(config, io.StringIO())
    events = read_events(Path(config.runs_dir) / config.run_id / "events.jsonl")
    return [(e["samples_seen"], e["acc"]) for e in events if e["kind"] == "validation"]


def samples_to_reach(points: list[tuple[int, float]], target: float) -> int | None:
    return next((s for s, acc in points if acc >= target), None)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.time_to_accuracy")
    p.add_argument("--data", default="data/synthetic")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--epochs", type=int, default=4, help="epochs of the baseline")
    p.add_argument("--async-epochs", type=int, default=0,
                   help="epochs of the async runs (default 1.5x --epochs, so a ratio above 1 is measurable)")
    p.add_argument("--eval-every", type=int, default=20, help="updates between validations")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--variants", default="none:0.9,lr/staleness:0.9",
                   help="async runs as POLICY:MOMENTUM, comma-separated (the baseline uses --momentum)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--workdir", default="bench-out")
    p.add_argument("--out", default="docs/time_to_accuracy")
    args = p.parse_args()
    work = Path(args.workdir).resolve()
    base = dict(data=args.data, model="cnn", epochs=args.epochs, batch_size=args.batch, lr=args.lr,
                loader_workers=1, runs_dir=str(work / "runs"), checkpoints_dir=str(work / "checkpoints"))
    if not Path(args.data).exists():
        from engine.synth import write_synthetic

        write_synthetic(args.data)
    runs: dict[str, list[tuple[int, float]]] = {}
    # The baseline validates every eval_every * workers updates: the same samples between points.
    runs["single process"] = curve(RunConfig(**base, workers=0, momentum=args.momentum,
                                             eval_every=args.eval_every * args.workers).validate())
    for variant in args.variants.split(","):
        policy, momentum = variant.rsplit(":", 1)
        if policy not in STALENESS_POLICIES:
            raise SystemExit(f"unknown staleness policy {policy!r} in --variants; use {STALENESS_POLICIES}")
        runs[f"async N={args.workers}, {policy}, momentum {momentum}"] = curve(RunConfig(
            **{**base, "epochs": args.async_epochs or math.ceil(1.5 * args.epochs)}, workers=args.workers, staleness_policy=policy, momentum=float(momentum),
            eval_every=args.eval_every).validate())
    target = runs["single process"][-1][1]
    base_samples = samples_to_reach(runs["single process"], target)
    summary: dict[str, Any] = {"target_acc": target, "baseline_samples": base_samples, "runs": {}}
    print(f"args: {vars(args)}")
    print(f"target: the baseline's final accuracy {target:.3f}, reached after {base_samples} samples")
    for name, points in runs.items():
        reached = samples_to_reach(points, target)
        ratio = reached / base_samples if reached and base_samples else None
        summary["runs"][name] = {"points": points, "samples_to_target": reached, "ratio": ratio}
        print(f"{name:>40}: final acc {points[-1][1]:.3f}, samples to target {reached}, "
              f"ratio {ratio if ratio is None else round(ratio, 2)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, points in runs.items():
        ax.plot([s for s, _ in points], [a for _, a in points], marker=".", label=name)
    ax.axhline(target, color="grey", linestyle=":", linewidth=1, label="baseline final accuracy")
    ax.set_xlabel("training samples seen")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Time to accuracy on the built-in data (small CNN)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
