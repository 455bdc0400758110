"""`--compare RUN`: a reference run drawn beside this one, and where this run stands against it.

The reference is any run (finished, or still running: it is read again as it grows) given by id
or path. Its events are folded by the same `Curves` as this run's, so both share the x axes
(samples seen, wall time since the start). `standing` says how many points of validation
accuracy this run is ahead of or behind the reference at the same samples seen (the latest both
have reached). A
reference with other data or another class count is still drawn, with a warning naming the
difference: comparing those silently is how a 0.5% run once looked like a 21% one.

Without `--compare`, a run is held to what one process reaches on its data with its settings,
when our benchmarks hold that curve (adt_tui/expectation.py); it is looked up once the run says
what it reads (its run_start).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from engine.errors import ConfigError
from engine.events import EventTail
from engine.rundir import RunDir

from .diagnose import Symptoms, explain
from .expectation import Expectation, matching
from .history import find_run
from .series import Curves, Series, count_label


@dataclass(frozen=True)
class Standing:
    """This run's validation accuracy against the reference's at the same samples seen."""

    points: float  # accuracy difference in percentage points (positive: ahead)
    samples: float  # where they are compared
    reference: str  # the reference's name: its run id, or "single process"
    tag: str  # its short name, for the header
    at_its_end: bool = False  # the reference ended before this run's samples: compared at its end

    def text(self) -> str:
        where = (f"at its last validation, {count_label(self.samples)} samples" if self.at_its_end
                 else f"at {count_label(self.samples)} samples")
        return f"{_signed(self.points)} points vs {self.reference} {where}"

    def short(self) -> str:
        return f"{_signed(self.points)} pts vs {self.tag} @{count_label(self.samples)}"


class Baseline(Protocol):
    """What a run is compared with: a `Reference` run or an `Expectation` (adt_tui/expectation.py)."""

    name: str  # in the headless lines
    tag: str  # the header's short name
    timed: bool  # its wall times can be drawn against this run's
    ended: bool  # it grows no more
    curves: Curves

    def describe(self) -> str: ...
    def refresh(self) -> bool: ...
    def differences(self, start: dict[str, Any] | None) -> list[str]: ...
    def warning(self, start: dict[str, Any] | None) -> str | None: ...


class Reference:
    """The reference run: its curves, read again as it grows."""

    def __init__(self, run: str, runs_dir: str | Path = "runs") -> None:
        try:
            self.run_dir = find_run(run, runs_dir)
        except ConfigError as exc:
            raise ConfigError("compare", exc.problem, exc.fix) from None
        self.name = self.run_dir.name
        self.tag = self.name[-13:]  # a run id's time and suffix
        self.timed = True  # its wall times are drawn too
        self.curves = Curves()
        self.start: dict[str, Any] | None = None
        self.ended = False  # its last start wrote run_end: it grows no more
        self._tail = EventTail(RunDir(self.run_dir).events)
        self.refresh()

    def refresh(self) -> bool:
        """Fold the reference's new events (a running reference grows); True when any came."""
        events = self._tail.poll()
        for e in events:
            kind = e.get("kind")
            if kind == "run_start":
                self.start = self.start or e
                self.ended = False
            elif kind == "run_end":
                self.ended = True
            self.curves.apply(e)
        return bool(events)

    def describe(self) -> str:
        return str(self.run_dir)

    def differences(self, start: dict[str, Any] | None) -> list[str]:
        """What makes the two runs not comparable: other data, another class count."""
        if start is None or self.start is None:
            return []
        found = []
        ours, theirs = (start.get("data") or {}).get("fingerprint"), (self.start.get("data") or {}).get("fingerprint")
        if ours and theirs and ours != theirs:
            found.append(f"data fingerprint {ours} here, {theirs} there")
        if start.get("num_classes") != self.start.get("num_classes"):
            found.append(f"{start.get('num_classes')} classes here, {self.start.get('num_classes')} there")
        return found

    def warning(self, start: dict[str, Any] | None) -> str | None:
        found = self.differences(start)
        if not found:
            return None
        return (f"--compare {self.name} reads other data than this run ({'; '.join(found)}): "
                "its curves are drawn, but the two are not comparable")


class Comparison:
    """A run against its reference, as a front end uses it: the reference's ghost curves, where
    this run stands, whether the two are comparable (said once) and why this run lags (each new
    cause once). The reference is `--compare`'s run, else the run's expectation once its
    run_start came (None while there is none: every answer is then None)."""

    def __init__(self, reference: Reference | None = None, expectations: Path | None = None) -> None:
        self.reference: Baseline | None = reference
        self.expectations = expectations  # the table of expectations (None: adt's own)
        self.symptoms = Symptoms()  # this run's, folded from its events
        self._cause: str | None = None
        self._checked = False

    def apply(self, e: dict[str, Any]) -> None:
        """Fold one of this run's events in."""
        self.symptoms.apply(e)
        if e.get("kind") == "run_start" and not isinstance(self.reference, Reference):  # a restart may change settings
            entry = matching(e, self.expectations)
            self.reference = Expectation(entry) if entry else None

    def refresh(self) -> bool:
        return self.reference is not None and self.reference.refresh()

    def ghost(self, axis: str) -> tuple[str, Curves] | None:
        """The reference's name and curves, when they can be drawn on `axis`."""
        if self.reference is None or (axis == "time" and not self.reference.timed):
            return None
        return self.reference.name, self.reference.curves

    def standing(self, curves: Curves) -> Standing | None:
        return standing(curves, self.reference) if self.reference is not None else None

    def header(self, curves: Curves, start: dict[str, Any] | None) -> str | None:
        """"−2.1 pts vs REF @240k", flagged when the data differ."""
        if self.reference is None:
            return None
        found = self.standing(curves)
        flag = " (other data)" if self.reference.differences(start) else ""
        return (found.short() if found else f"vs {self.reference.tag}") + flag

    def not_comparable(self, start: dict[str, Any] | None) -> str | None:
        """The warning about other data, once, as soon as this run has started."""
        if self._checked or start is None or self.reference is None:
            return None
        self._checked = True
        return self.reference.warning(start)

    def new_lag(self, curves: Curves) -> str | None:
        """Trailing the reference by more than a few points: the likely cause with its evidence
        and the flag for it, when that cause is new."""
        why = explain(self.standing(curves), self.symptoms)
        said = why.text if why is not None and why.cause != self._cause else None
        self._cause = why.cause if why else None
        return said


def standing(curves: Curves, reference: Baseline) -> Standing | None:
    """This run's validation accuracy against the reference's at the same samples seen: at this
    run's latest validation, or at the reference's latest if that is earlier (a reference that
    ended there, or is still on its way); each side read between its validations. None until
    both validated past the other's first point."""
    ours, theirs = curves.val_acc, reference.curves.val_acc
    if not len(ours) or not len(theirs):
        return None
    x = min(ours.x[-1], theirs.x[-1])
    if x < max(ours.x[0], theirs.x[0]):
        return None
    ended_before = reference.ended and theirs.x[-1] < ours.x[-1]
    return Standing(100 * (_at(ours, x) - _at(theirs, x)), x, reference.name, reference.tag,
                    at_its_end=ended_before)


def mean_train_loss(curves: Curves) -> Series:
    """The reference's training loss as one line: the mean over its workers, point by point in
    samples order (one worker: its own curve)."""
    points = sorted((x, t, y) for s in curves.train_loss.values() for x, t, y in zip(s.x, s.t, s.y, strict=True))
    size = max(1, len(curves.train_loss))
    line = Series()
    for i in range(0, len(points) - size + 1, size):
        group = points[i:i + size]
        line.add(group[-1][1], group[-1][0], sum(y for _, _, y in group) / size)
    return line


def _at(series: Series, x: float) -> float:
    """The series' value at x, linear between its two neighbouring points."""
    for i in range(1, len(series)):
        if series.x[i] >= x:
            x0, x1, y0, y1 = series.x[i - 1], series.x[i], series.y[i - 1], series.y[i]
            return y1 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return series.y[-1]


def _signed(points: float) -> str:
    return f"{'+' if points >= 0 else '−'}{abs(points):.1f}"
