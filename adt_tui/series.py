"""Series for charts, folded from events once: used by the monitor, the headless printer and reports.

`Curves.apply(event)` turns the event stream into bounded curves: training loss and accuracy per
worker, validation loss and accuracy of the global model, learning rate, staleness, epoch
boundaries. Every point carries both x axes, wall time (seconds since the first start) and
samples seen (all workers), so a chart can switch between them without a second fold.

A `Series` never grows past its capacity: when full it halves itself, keeping its first and last
points and the smallest and largest value of every bucket, so a spike or a dip survives any
number of halvings and the newest point is always drawn. Plain Python: no torch, no Textual.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

CAPACITY = 2048  # points kept per curve: several times the widest chart's pixel columns


def count_label(value: float) -> str:
    """12, 1.5k, 120k, 3.2M: a count of samples, on an axis or in a line."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.3g}{suffix}"
    return f"{value:.0f}"


def num(value: Any) -> float | None:
    """A number from an event field; the schema writes NaN/inf as strings."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)  # "nan", "inf", "-inf"
        except ValueError:
            return None
    return None


def decimate(values: Sequence[float], target: int) -> list[int]:
    """Indices of at most ~`target` points of `values` that keep the first, the last and the
    extrema: the interior is cut into buckets and each keeps its min and its max, in order."""
    n = len(values)
    if n <= max(target, 3):
        return list(range(n))
    buckets = max(1, (target - 2) // 2)
    size = (n - 2) / buckets
    keep = [0]
    for b in range(buckets):
        lo, hi = 1 + int(b * size), 1 + int((b + 1) * size)
        if lo >= hi:
            continue
        chunk = range(lo, hi)
        low = min(chunk, key=values.__getitem__)
        high = max(chunk, key=values.__getitem__)
        keep.extend(sorted({low, high}))
    keep.append(n - 1)
    return keep


class Series:
    """One curve of (t, samples, value) points, at most `capacity` of them (finite values only)."""

    __slots__ = ("t", "x", "y", "capacity", "added")

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.t: list[float] = []
        self.x: list[float] = []
        self.y: list[float] = []
        self.capacity = capacity
        self.added = 0  # points ever added, kept or not

    def __len__(self) -> int:
        return len(self.y)

    def add(self, t: float, x: float, y: float | None) -> None:
        if y is None or not math.isfinite(y):
            return  # a chart cannot draw NaN; the numbers beside it still show it
        self.t.append(t)
        self.x.append(x)
        self.y.append(y)
        self.added += 1
        if len(self.y) > self.capacity:
            self._keep(decimate(self.y, self.capacity // 2))

    def _keep(self, indices: list[int]) -> None:
        self.t = [self.t[i] for i in indices]
        self.x = [self.x[i] for i in indices]
        self.y = [self.y[i] for i in indices]

    def points(self, axis: str = "samples", target: int | None = None) -> tuple[list[float], list[float]]:
        """(xs, ys) on `axis` ("samples" or "time"), thinned to about `target` points if given."""
        xs = self.x if axis == "samples" else self.t
        if target is None or len(self.y) <= target:
            return list(xs), list(self.y)
        kept = decimate(self.y, target)
        return [xs[i] for i in kept], [self.y[i] for i in kept]

    @property
    def last(self) -> float | None:
        return self.y[-1] if self.y else None


@dataclass
class Mark:
    """A vertical line on every chart: an epoch boundary (or a restart)."""

    t: float
    x: float
    label: str


@dataclass
class Curves:
    """The run's curves; feed events in file order with `apply()`."""

    train_loss: dict[int, Series] = field(default_factory=dict)
    train_acc: dict[int, Series] = field(default_factory=dict)
    val_loss: Series = field(default_factory=Series)
    val_acc: Series = field(default_factory=Series)
    chance: float | None = None
    lr: Series = field(default_factory=Series)
    staleness_p50: Series = field(default_factory=Series)
    staleness_max: Series = field(default_factory=Series)
    epochs: list[Mark] = field(default_factory=list)
    staleness_counts: Counter[int] = field(default_factory=Counter)  # every push's, from the PS
    samples: float = 0.0  # samples seen so far (all workers): the x of the next point
    last_x: float = 0.0  # the samples axis of the last event's points
    t0: float | None = None
    changes: int = 0  # moves whenever a curve moved: charts redraw only then
    # The samples axis: the PS's samples_seen for its points (+ shift after a resume, which redoes
    # the interrupted epoch); for a worker's point, the workers' own counts (+ base) when ahead.
    _shift: float = 0.0
    _ps_x: float = 0.0  # the PS's last count, shifted
    _base: float = 0.0
    _worker_samples: dict[int, float] = field(default_factory=dict)
    _workers_total: float = 0.0  # sum of _worker_samples, kept as it changes
    _epoch_samples: dict[int, float] = field(default_factory=dict)  # raw samples_seen at epoch ends

    @classmethod
    def from_events(cls, events: Iterable[dict[str, Any]]) -> Curves:
        curves = cls()
        for event in events:
            curves.apply(event)
        return curves

    @property
    def workers(self) -> list[int]:
        return sorted(set(self.train_loss) | set(self.train_acc))

    def apply(self, e: dict[str, Any]) -> None:
        """Fold one event in (kinds without curves are ignored)."""
        kind = e.get("kind")
        t_abs = num(e.get("t"))
        if t_abs is None:
            return
        if self.t0 is None:
            self.t0 = t_abs
        t = t_abs - self.t0
        if kind == "worker_metrics":
            self._worker(e, t)
        elif kind == "ps_metrics":
            x = self.last_x = self._ps_samples(e)
            self.lr.add(t, x, num(e.get("lr")))
            stale = e.get("staleness") or {}
            self.staleness_p50.add(t, x, num(stale.get("p50")))
            self.staleness_max.add(t, x, num(stale.get("max")))
            for value, count in (stale.get("hist") or {}).items():
                self.staleness_counts[int(value)] += int(count)
        elif kind == "validation":
            x = self.last_x = self._ps_samples(e)
            self.val_loss.add(t, x, num(e.get("loss")))
            self.val_acc.add(t, x, num(e.get("acc")))
            self.chance = num(e.get("chance")) or self.chance
        elif kind == "epoch_end":
            raw = num(e.get("samples_seen"))
            epoch = int(e.get("epoch", -1))
            if raw is not None:
                self._epoch_samples[epoch] = raw
            self.epochs.append(Mark(t, self._ps_samples(e), f"epoch {epoch + 1}"))
        elif kind == "run_start":
            self._start(e)
        else:
            return
        self.changes += 1

    def _worker(self, e: dict[str, Any], t: float) -> None:
        if not e.get("timing"):
            return  # an interval without a finished step: its loss and acc read 0, not data
        w = int(e.get("worker", 0))
        own = num(e.get("samples"))
        if own is not None:
            self._workers_total += own - self._worker_samples.get(w, 0.0)
            self._worker_samples[w] = own
        x = self.last_x = max(self._ps_x, self._base + self._workers_total)
        self.samples = max(self.samples, x)
        if w not in self.train_loss:
            self.train_loss[w], self.train_acc[w] = Series(), Series()
        self.train_loss[w].add(t, x, num(e.get("loss")))
        self.train_acc[w].add(t, x, num(e.get("acc")))

    def _ps_samples(self, e: dict[str, Any]) -> float:
        """The PS's own count (the truth for its points), continued across resumes."""
        raw = num(e.get("samples_seen"))
        if raw is not None:
            self._ps_x = raw + self._shift
            self.samples = max(self.samples, self._ps_x)
        return self._ps_x

    def _start(self, e: dict[str, Any]) -> None:
        if not self.changes:
            return
        # A resume starts new worker processes (their counts restart at 0) and redoes the
        # interrupted epoch: the PS's count goes back to the end of the last whole epoch.
        epoch = int(e.get("epoch") or 0)
        self._base = self.samples
        self._worker_samples, self._workers_total = {}, 0.0
        self._shift = self.samples - self._epoch_samples.get(epoch - 1, 0.0)
        self.epochs.append(Mark(0.0 if self.t0 is None else num(e.get("t")) - self.t0,  # type: ignore[operator]
                                self.samples, "resumed"))

    def staleness_median(self) -> float | None:
        """The median staleness over every worker report (exact, not from the thinned curves)."""
        total = sum(self.staleness_counts.values())
        if not total:
            return None
        seen = 0
        for value in sorted(self.staleness_counts):
            seen += self.staleness_counts[value]
            if seen * 2 >= total:
                return float(value)
        return None
