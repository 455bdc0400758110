"""Charts with axes (plotext through textual-plotext), drawn from the curves of `series.Curves`.

`*_chart(curves, axis)` functions turn curves into a `ChartSpec` (plain data: lines, reference
lines, ticks); `Chart` draws a spec. The app decides when to hand a chart a new spec (at most a
few times a second); a chart rebuilds its picture only then and when it is resized.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rich.text import Text
from textual.message import Message
from textual_plotext import PlotextPlot

from .compare import mean_train_loss
from .series import Curves, Series, count_label

# One colour per worker (a colour-blind-friendly set), then the global model in the foreground.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 158, 255), (255, 140, 0), (0, 200, 120), (230, 60, 160), (240, 220, 60),
    (150, 110, 255), (100, 220, 230), (200, 120, 60),
)
GLOBAL = (235, 235, 235)  # validation of the global model
REFERENCE = (140, 140, 140)  # the chance level
GHOST = (120, 120, 120)  # --compare: the reference run's curve
EPOCH = (80, 80, 80)  # epoch boundaries: faint, there are many
AXES = ("samples", "time")


def worker_color(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


@dataclass
class Line:
    label: str
    xs: list[float]
    ys: list[float]
    color: tuple[int, int, int]
    marker: str = "braille"


@dataclass
class ChartSpec:
    """What one chart shows; equal specs draw equal pictures."""

    title: str
    axis: str  # "samples" or "time"
    lines: list[Line] = field(default_factory=list)
    hlines: list[tuple[float, str]] = field(default_factory=list)  # (y, label): chance level
    vlines: list[float] = field(default_factory=list)  # x of epoch boundaries
    percent: bool = False  # y is a fraction shown as 0..100%, axis fixed to 0..1
    log: bool = False  # y on a log scale (loss: early values are 10-100x the late ones)
    empty: str = "waiting for data"

    def legend(self, width: int = 1000) -> Text:
        """The title and one coloured mark per line, for the chart's border (short labels, w0
        for worker 0, when the long ones do not fit in `width`)."""
        for short in (False, True):
            text = Text(self.title, style="bold")
            for line in self.lines:
                text.append("  ")
                mark = {"braille": "━━", "dot": "••"}.get(line.marker, "■■")
                text.append(mark, style=f"rgb{line.color}")
                label = line.label.replace("worker ", "w").replace("validation", "val") if short else line.label
                text.append(" " + label)
            if self.hlines:
                text.append("  ")
                text.append("┄┄", style=f"rgb{REFERENCE}")
                text.append(" " + ", ".join(label for _, label in self.hlines))
            if len(text) <= width:
                break
        return text


# --- specs ------------------------------------------------------------------------------------
def _points(series: Series, axis: str, target: int) -> tuple[list[float], list[float]]:
    return series.points(axis, target)


def _epoch_lines(curves: Curves, axis: str, limit: int = 40) -> list[float]:
    """Epoch boundaries as x values; with very many epochs, every k-th so the chart stays legible."""
    xs = [m.x if axis == "samples" else m.t for m in curves.epochs]
    step = max(1, math.ceil(len(xs) / limit))
    return xs[step - 1::step]


def train_chart(curves: Curves, axis: str, metric: str, target: int = 400,
                ghost: tuple[str, Curves] | None = None) -> ChartSpec:
    """Training loss or accuracy ("loss" or "acc") of every worker, and validation on top; with
    a `ghost` (--compare: name, curves), the reference's training loss or validation accuracy
    underneath, named by its run id."""
    per_worker = curves.train_loss if metric == "loss" else curves.train_acc
    spec = ChartSpec("loss (log)" if metric == "loss" else "accuracy", axis,
                     percent=metric == "acc", log=metric == "loss")
    if ghost is not None:
        name, reference = ghost
        line = mean_train_loss(reference) if metric == "loss" else reference.val_acc
        if len(line):
            xs, ys = _points(line, axis, target)
            spec.lines.append(Line(name, xs, ys, GHOST, marker="dot"))
    for w in sorted(per_worker):
        xs, ys = _points(per_worker[w], axis, target)
        spec.lines.append(Line(f"worker {w}", xs, ys, worker_color(w)))
    val = curves.val_loss if metric == "loss" else curves.val_acc
    if len(val):
        xs, ys = _points(val, axis, target)
        spec.lines.append(Line("validation", xs, ys, GLOBAL, marker="hd"))
    if metric == "acc" and curves.chance:
        spec.hlines.append((curves.chance, "chance"))
    spec.vlines = _epoch_lines(curves, axis)
    return spec


def lr_chart(curves: Curves, axis: str, target: int = 200) -> ChartSpec:
    xs, ys = _points(curves.lr, axis, target)
    spec = ChartSpec("learning rate", axis, [Line("lr", xs, ys, PALETTE[5])] if ys else [])
    spec.vlines = _epoch_lines(curves, axis)
    return spec


def staleness_chart(curves: Curves, axis: str, target: int = 200) -> ChartSpec:
    spec = ChartSpec("staleness", axis, empty="no pushes yet (or one process: no staleness)")
    for name, series, color in (("max", curves.staleness_max, PALETTE[1]),
                                ("p50", curves.staleness_p50, PALETTE[0])):
        if len(series):
            xs, ys = _points(series, axis, target)
            spec.lines.append(Line(name, xs, ys, color))
    spec.vlines = _epoch_lines(curves, axis)
    return spec


CHARTS = ("loss", "acc", "lr", "staleness")


def chart_spec(name: str, curves: Curves, axis: str, target: int = 400,
               ghost: tuple[str, Curves] | None = None) -> ChartSpec:
    """The spec of chart `name` (one of CHARTS), each line thinned to about `target` points
    (a chart W cells wide shows 2W braille dots across: more points cost time, not detail)."""
    if name in ("loss", "acc"):
        return train_chart(curves, axis, name, target, ghost)
    return lr_chart(curves, axis, target) if name == "lr" else staleness_chart(curves, axis, target)


# --- ticks ------------------------------------------------------------------------------------
def nice_ticks(lo: float, hi: float, count: int) -> list[float]:
    """About `count` round values between lo and hi (1, 2, 2.5 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def time_label(seconds: float) -> str:
    """0:45, 12:30, 1:05:00: wall time since the start on an axis."""
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def value_label(value: float, step: float) -> str:
    if value == 0:
        return "0"
    if abs(value) < 1e-3 or abs(value) >= 1e5:
        return f"{value:.0e}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:.{decimals}f}"


def x_tick_labels(lo: float, hi: float, count: int, axis: str) -> tuple[list[float], list[str]]:
    """The x axis's ticks and labels, every label different: early in a run the span is a few
    samples or seconds, and rounded labels repeated ("1.29k 1.29k 1.29k"). Samples then show in
    full, and a tick whose label says what the one before it said is left out."""
    ticks = nice_ticks(lo, hi, count)
    label = count_label if axis == "samples" else time_label
    labels = [label(t) for t in ticks]
    if axis == "samples" and len(set(labels)) < len(labels):
        labels = [f"{t:,.0f}" for t in ticks]
    kept = [i for i, text in enumerate(labels) if i == 0 or text != labels[i - 1]]
    return [ticks[i] for i in kept], [labels[i] for i in kept]


def one_per_row(ticks: list[float], lo: float, hi: float, rows: int) -> list[float]:
    """At most one tick per text row of the plot: two on one row overwrite each other's label,
    and which one wins varied from run to run."""
    kept: dict[int, float] = {}
    for t in ticks:
        kept.setdefault(round((t - lo) / (hi - lo) * max(1, rows - 1)) if hi > lo else 0, t)
    return list(kept.values())


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks for a log axis between 10**lo and 10**hi, as exponents: 1-2-5 per decade, or
    decades only when there are many."""
    mantissas = (1, 2, 5) if hi - lo <= 3 else (1,)
    ticks = [math.log10(m) + d for d in range(math.floor(lo), math.ceil(hi) + 1) for m in mantissas]
    inside = [t for t in ticks if lo <= t <= hi]
    if len(inside) >= 3:
        return inside
    # Less than a decade: round values of the loss itself, placed on the log axis.
    return [math.log10(v) for v in nice_ticks(10 ** lo, 10 ** hi, 4) if v > 0]


# --- the widget -------------------------------------------------------------------------------
class Chart(PlotextPlot):
    """One chart: axes with ticks, a legend in its border, reference lines; draws a `ChartSpec`."""

    DEFAULT_CSS = """
    Chart { width: 1fr; height: 1fr; }
    """

    def __init__(self, name: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.chart = name
        self.spec: ChartSpec | None = None
        self.builds = 0  # how often the picture was rebuilt (the benchmark reads it)
        self.drawn_key: tuple[int, str, int] | None = None  # what the app last gave us, and when
        self.drawn_at = 0.0
        self._shown = 0  # specs given so far: a new one means a new picture
        self._built: object = None
        self._built_key: tuple[object, ...] | None = None

    def show(self, spec: ChartSpec) -> None:
        """Draw this spec (the app calls this at most a few times a second)."""
        self.spec = spec
        self._shown += 1
        self._title()
        self.refresh()

    class Resized(Message):
        """The chart's size changed: its spec (points decimated to its width) needs a redraw."""

    def on_resize(self) -> None:
        self._title()
        self.post_message(self.Resized())

    def _title(self) -> None:
        if self.spec is not None:
            self.border_title = self.spec.legend(self.size.width - 4).markup

    def render(self):  # type: ignore[no-untyped-def]
        # Textual asks again on any repaint of the region: build only for a new spec or size.
        key = (self._shown, tuple(self.size), self.app.theme)
        if key != self._built_key:
            self._built, self._built_key = self._build(), key
        return self._built

    def _build(self):  # type: ignore[no-untyped-def]
        plt = self.plt
        plt.clear_figure()
        self.builds += 1
        spec = self.spec
        width, height = self.size
        if spec is None or not any(line.ys for line in spec.lines):
            return Text((spec.empty if spec else "waiting for data"), style="dim")
        xs = [x for line in spec.lines for x in line.xs]
        x_lo, x_hi = min(xs), max(xs)
        if x_hi <= x_lo:
            x_hi = x_lo + 1
        log = spec.log and all(y > 0 for line in spec.lines for y in line.ys)
        lines = [(line, [math.log10(y) for y in line.ys] if log else line.ys) for line in spec.lines]
        if spec.percent:
            y_lo, y_hi = 0.0, 1.0
        else:
            ys = [y for _, values in lines for y in values]
            y_lo, y_hi = min(ys), max(ys)
            if y_hi - y_lo < 1e-12:
                y_lo, y_hi = y_lo - abs(y_lo) * 0.1 - 1e-6, y_hi + abs(y_hi) * 0.1 + 1e-6
            pad = (y_hi - y_lo) * 0.04
            y_lo, y_hi = y_lo - pad, y_hi + pad
        # Reference lines first, as faint dotted braille, so the data draws over them.
        for x in spec.vlines[:: max(1, math.ceil(len(spec.vlines) / max(1, width // 5)))]:
            if x_lo < x < x_hi:
                plt.plot([x, x], [y_lo, y_hi], color=EPOCH, marker="braille")
        for y, _label in spec.hlines:
            plt.plot([x_lo, x_hi], [y, y], color=REFERENCE, marker="braille")
        for line, values in lines:
            if values:
                plt.plot(line.xs, values, color=line.color, marker=line.marker)
        plt.xlim(x_lo, x_hi)
        plt.ylim(y_lo, y_hi)
        ticks, labels = x_tick_labels(x_lo, x_hi, max(2, width // 14), spec.axis)
        plt.xticks(ticks, labels)
        if spec.percent:
            steps = [0, 0.25, 0.5, 0.75, 1] if height >= 12 else [0, 0.5, 1]
            plt.yticks(steps, [f"{100 * s:.0f}%" for s in steps])
        elif log:
            yt = one_per_row(log_ticks(y_lo, y_hi), y_lo, y_hi, height - 4)
            plt.yticks(yt, [f"{10 ** t:.3g}" for t in yt])
        else:
            yt = nice_ticks(y_lo, y_hi, max(2, height // 4))
            step = yt[1] - yt[0] if len(yt) > 1 else abs(yt[0]) or 1
            plt.yticks(yt, [value_label(t, step) for t in yt])
        plt.xlabel("samples seen" if spec.axis == "samples" else "wall time")
        return super().render()
