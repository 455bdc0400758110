"""`adt report`: runs plotted side by side (PNG and a self-contained HTML page) plus a text summary.

Reads each run's `events.jsonl` only (no torch), folded into curves by series.py, the same
code that feeds the monitor's charts. The figure overlays the runs, one colour each:
training loss and accuracy per worker over time, validation loss and accuracy over samples seen
and over time. That is the comparison a user needs to judge async training against the
`--workers 0` baseline: does it learn as well per sample, and does it get there sooner?
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from .history import find_run, format_duration, read_run, run_info

LINESTYLES = ("-", "--", ":", "-.")


@dataclass
class RunSeries:
    """One run's curves, times in seconds since its first start (from the fold in series.py)."""

    run_id: str
    label: str
    state: str
    epochs: int
    duration: float | None
    chance: float | None = None
    # worker -> {"t_loss", "loss", "t_acc", "acc"} (NaN losses are left out, so the times differ)
    train: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    val: dict[str, list[float]] = field(default_factory=lambda: {"t": [], "samples": [], "loss": [], "acc": []})
    staleness_median: float | None = None
    staleness_max: int | None = None
    samples_seen: int = 0


def load_series(run_dir: Path) -> RunSeries:
    """A run's curves from its event stream, folded by the same code as the monitor's charts."""
    run = read_run(run_dir)  # the monitor's fold, read once
    info = run_info(run_dir, run=run)
    mode = "single process (--workers 0)" if info.workers == 0 else f"async, {info.workers} workers"
    series = RunSeries(info.run_id, f"{info.run_id}: {mode}", info.state, 0, info.duration)
    curves, series.epochs = run.curves, run.config.get("epochs", 0)
    for worker in curves.workers:
        loss, acc = curves.train_loss[worker], curves.train_acc[worker]
        if len(loss):
            series.train[worker] = {"t_loss": loss.t, "loss": loss.y, "t_acc": acc.t, "acc": acc.y}
    # Validation: the points where both loss and accuracy are numbers.
    acc_at = dict(zip(curves.val_acc.t, zip(curves.val_acc.x, curves.val_acc.y, strict=True), strict=True))
    for t, loss in zip(curves.val_loss.t, curves.val_loss.y, strict=True):
        if t in acc_at:
            x, acc = acc_at[t]
            for key, value in (("t", t), ("samples", x), ("loss", loss), ("acc", acc)):
                series.val[key].append(value)
    series.chance = curves.chance
    series.staleness_median = curves.staleness_median()
    series.staleness_max = max(curves.staleness_counts, default=None)
    series.samples_seen = int(curves.samples)
    return series


def summarize(runs: list[RunSeries]) -> str:
    """A few lines: each run's outcome, accuracy, time and throughput, then each against the first."""
    lines = []
    width = max(len(r.run_id) for r in runs)
    for r in runs:
        best = max(r.val["acc"], default=None)
        final = r.val["acc"][-1] if r.val["acc"] else None
        speed = r.samples_seen / r.duration if r.duration else None
        stale = (f", staleness median {r.staleness_median:g} max {r.staleness_max}"
                 if r.staleness_max else "")
        lines.append(f"{r.run_id:<{width}}  {r.label.split(': ', 1)[1]}, {r.state}, {r.epochs} epochs: "
                     f"best val acc {_pct(best)} (final {_pct(final)}), {format_duration(r.duration)}, "
                     f"{f'{speed:.0f}' if speed else '-'} train samples/s{stale}")
    base = runs[0]
    for r in runs[1:]:
        parts = [f"{r.run_id} vs {base.run_id}:"]
        if r.val["acc"] and base.val["acc"]:
            parts.append(f"best val acc {100 * (max(r.val['acc']) - max(base.val['acc'])):+.1f} points")
        if r.duration and base.duration:
            parts.append(f"{r.duration / base.duration:.2f}x the wall time")
        lines.append(" ".join(parts[:1]) + " " + ", ".join(parts[1:]))
    return "\n".join(lines)


def plot(runs: list[RunSeries], path: Path) -> None:
    """The comparison figure as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    fig = Figure(figsize=(13, 12), layout="constrained")
    axes = fig.subplots(3, 2)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for r, color in zip(runs, colors, strict=True):
        for worker, curve in sorted(r.train.items()):
            style = LINESTYLES[worker % len(LINESTYLES)]
            label = f"{r.run_id} worker {worker}"
            axes[0, 0].plot(curve["t_loss"], curve["loss"], style, color=color, alpha=0.8, label=label)
            axes[0, 1].plot(curve["t_acc"], curve["acc"], style, color=color, alpha=0.8, label=label)
        for row, x in ((1, "samples"), (2, "t")):
            axes[row, 0].plot(r.val[x], r.val["loss"], "o-", color=color, label=r.label)
            axes[row, 1].plot(r.val[x], r.val["acc"], "o-", color=color, label=r.label)
    chance = next((r.chance for r in runs if r.chance), None)
    titles = (("Training loss per worker", "Training accuracy per worker"),
              ("Validation loss over samples seen", "Validation accuracy over samples seen"),
              ("Validation loss over time", "Validation accuracy over time"))
    for row in range(3):
        for col in range(2):
            ax = axes[row, col]
            ax.set_title(titles[row][col])
            ax.set_xlabel("training samples seen (all workers)" if row == 1 else "seconds since start")
            ax.set_ylabel("loss (log scale)" if col == 0 else "accuracy")
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_yscale("log")
            else:
                ax.set_ylim(0, 1.02)
                if chance:
                    ax.axhline(chance, color="grey", linestyle=":", linewidth=1)
                    ax.text(ax.get_xlim()[0], chance, " chance", va="bottom", color="grey", fontsize=8)
            if ax.lines:
                ax.legend(fontsize=8, loc="best")
    fig.suptitle("adt report: " + " vs ".join(r.run_id for r in runs), fontsize=14)
    fig.savefig(path, dpi=100)


def write_html(runs: list[RunSeries], png: Path, summary: str, path: Path) -> None:
    """One self-contained page: the summary and the same figure, inlined, to share as a file."""
    image = base64.b64encode(png.read_bytes()).decode()
    title = html.escape("adt report: " + " vs ".join(r.run_id for r in runs))
    path.write_text(
        f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n"
        f"<body style=\"font-family: sans-serif; max-width: 1320px; margin: auto\">\n"
        f"<h1>{title}</h1>\n<pre>{html.escape(summary)}</pre>\n"
        f"<img alt=\"training and validation curves\" style=\"width: 100%\" "
        f"src=\"data:image/png;base64,{image}\">\n</body></html>\n")


def write_report(run_ids: list[str], runs_dir: str | Path = "runs",
                 out: str | Path | None = None) -> tuple[Path, Path, str]:
    """Plot and summarize runs; returns (PNG path, HTML path, summary text)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("adt report needs matplotlib. Fix: pip install -e '.[report]'") from None
    dirs = [find_run(run_id, runs_dir) for run_id in run_ids]
    runs = [load_series(d) for d in dirs]
    png = Path(out) if out else Path("reports") / ("_vs_".join(d.name for d in dirs) + ".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs)
    plot(runs, png)
    html_path = png.with_suffix(".html")
    write_html(runs, png, summary, html_path)
    return png, html_path, summary


def _pct(value: float | None) -> str:
    return f"{value:.1%}" if value is not None else "-"
