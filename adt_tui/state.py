"""A run as data: fold the events of `runs/<id>/events.jsonl` into one `RunState`.

This is the monitor's only data layer (nvitop style: panels draw from it, nothing else), and it
is deliberately plain Python: no Textual, no torch (engine.events is plain JSON), so the headless
printer and a report command can reuse it. Feed it events in file order with `apply()`; read the
attributes. The curves for charts are folded alongside, by `series.Curves` (`state.curves`).

Everything kept is bounded, so a long or fast run costs constant memory.
"""

from __future__ import annotations

import math
import signal
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.events import (
    AlertCode,
    read_events,  # plain JSON reading: no torch, no Textual
)

from .series import Curves, num

MAX_VALIDATIONS = 240
MAX_ALERTS = 200


def describe_exit(code: int | None) -> str:
    """'exited 0', 'exited 1', 'killed (SIGKILL)' or 'exited'."""
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"killed ({signal.Signals(-code).name})"
        except ValueError:
            return f"killed (signal {-code})"
    return f"exited {code}"


@dataclass
class Alert:
    t: float
    level: str  # "info", "warning" or "error"
    code: str
    message: str
    worker: int | None = None
    pid: int | None = None  # set for process exits, so a later, better report can replace it


@dataclass
class ProcessState:
    """What every process panel shows: identity and how it ended."""

    pid: int | None = None
    host: str = ""
    exit_code: int | None = None
    exited: bool = False
    exit_reason: str = ""

    @property
    def status(self) -> str:
        if not self.exited:
            return "running" if self.pid else "waiting"
        return describe_exit(self.exit_code)


@dataclass
class WorkerState(ProcessState):
    worker: int = 0
    device: str = ""
    code_fingerprint: str = ""
    epoch: int | None = None
    step: int | None = None
    samples: int | None = None
    loss: float | None = None
    acc: float | None = None
    images_per_s: float | None = None
    staleness: int | None = None
    timing: dict[str, float] = field(default_factory=dict)
    last_t: float | None = None


@dataclass
class ServerState(ProcessState):
    role: str = "ps"  # "ps", or "single" when one process trains alone
    version: int | None = None
    epoch: int | None = None
    samples_seen: int | None = None
    updates_per_s: float | None = None
    staleness_p50: float | None = None
    staleness_p95: float | None = None
    staleness_max: float | None = None
    dropped: int | None = None
    lr: float | None = None
    apply_ms: float | None = None
    live_workers: int | None = None


@dataclass
class Validation:
    t: float
    version: int | None
    epoch: int | None
    loss: float | None
    acc: float | None
    chance: float | None


@dataclass
class Checkpoint:
    t: float
    tag: str
    path: str
    version: int | None
    epoch: int | None
    val_acc: float | None


@dataclass
class RunState:
    """Everything the stream has said about one run (across resumes in the same file)."""

    run_id: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    mode: str = ""
    model: str = ""
    num_classes: int | None = None
    workers_expected: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    code: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False
    starts: int = 0
    start_t: float | None = None
    last_t: float | None = None
    end_t: float | None = None
    checkpoint_dir: str = ""  # the last start's
    outcome: str | None = None
    end_message: str = ""
    best_val_acc: float | None = None
    epochs_done: int = 0
    server: ServerState = field(default_factory=ServerState)
    workers: dict[int, WorkerState] = field(default_factory=dict)
    validations: deque[Validation] = field(default_factory=lambda: deque(maxlen=MAX_VALIDATIONS))
    checkpoints: list[Checkpoint] = field(default_factory=list)
    alerts: deque[Alert] = field(default_factory=lambda: deque(maxlen=MAX_ALERTS))
    curves: Curves = field(default_factory=Curves)
    events: int = 0  # events applied; panels redraw only when this moved
    skipped: int = 0  # events of an unknown kind or a newer schema
    _segment_start: float | None = None  # the last start's run_start time
    _segments: float = 0.0  # seconds of the starts before it, each to its last event

    # --- reading ------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path) -> RunState:
        """The state after every complete event in a file."""
        state = cls()
        state.apply_all(read_events(path))
        return state

    @property
    def ended(self) -> bool:
        return self.outcome is not None

    @property
    def validation(self) -> Validation | None:
        return self.validations[-1] if self.validations else None

    def trained(self, now: float | None = None) -> float | None:
        """Seconds of training, summed over the starts of a resumed run: each from its run_start
        to its last event (the last one to `now` while it runs); None before any start."""
        if self._segment_start is None or self.last_t is None:
            return None
        return self._segments + ((now if now is not None else self.last_t) - self._segment_start)

    def elapsed(self, now: float) -> float:
        """Seconds from the first start to the end (or to `now` while running)."""
        if self.start_t is None:
            return 0.0
        return max(0.0, (self.end_t if self.end_t is not None else now) - self.start_t)

    def cuda_devices(self) -> dict[int, int]:
        """pid -> the CUDA device index each process was given, from its events and the config."""
        found: dict[int, int] = {}
        server_device = str(self.config.get("device" if self.mode == "single" else "ps_device", ""))
        named = [(self.server.pid, server_device)] + [(w.pid, w.device) for w in self.workers.values()]
        for pid, device in named:
            if pid and device.startswith("cuda:") and device[5:].isdigit():
                found[pid] = int(device[5:])
        return found

    def worker(self, index: int) -> WorkerState:
        if index not in self.workers:
            self.workers[index] = WorkerState(worker=index)
        return self.workers[index]

    # --- folding ------------------------------------------------------------------------
    def apply_all(self, events: Iterable[dict[str, Any]]) -> None:
        for event in events:
            self.apply(event)

    def apply(self, event: dict[str, Any]) -> None:
        """Fold one event in; unknown kinds and newer schema versions are counted and skipped."""
        if event.get("v", 1) > 1:
            self.skipped += 1
            return
        handler = getattr(self, "_on_" + str(event.get("kind")), None)
        if handler is None:
            self.skipped += 1
            return
        t = num(event.get("t"))
        if event.get("kind") == "run_start" and t is not None:
            if self._segment_start is not None and self.last_t is not None:
                self._segments += self.last_t - self._segment_start
            self._segment_start = t
        if t is not None:
            self.last_t = t if self.last_t is None else max(self.last_t, t)
        handler(event, t or 0.0)
        self.curves.apply(event)
        self.events += 1

    def _on_run_start(self, e: dict[str, Any], t: float) -> None:
        self.run_id = e.get("run_id", self.run_id)
        self.config = e.get("config") or self.config
        self.mode = e.get("mode", self.mode)
        self.model = e.get("model", self.model)
        self.num_classes = e.get("num_classes", self.num_classes)
        self.workers_expected = e.get("workers", self.workers_expected)
        self.data = e.get("data") or self.data
        self.code = e.get("code") or self.code
        self.checkpoint_dir = e.get("checkpoint_dir") or self.checkpoint_dir
        self.resumed = bool(e.get("resumed"))
        self.starts += 1
        if self.start_t is None:
            self.start_t = t
        # A resume continues the same run: keep the curves, forget how the last attempt ended,
        # and the exits of its processes (the new ones are what the banner is about).
        self.outcome, self.end_t, self.end_message = None, None, ""
        self.alerts = deque((a for a in self.alerts if a.code != AlertCode.PROCESS_EXIT), maxlen=MAX_ALERTS)
        self.server.role = "single" if self.mode == "single" else "ps"
        self.server.pid = e.get("pid", self.server.pid)
        self.server.exited, self.server.exit_code, self.server.exit_reason = False, None, ""
        self.server.version = e.get("version", self.server.version)
        self.server.epoch = e.get("epoch", self.server.epoch)

    def _on_worker_join(self, e: dict[str, Any], t: float) -> None:
        w = self.worker(int(e.get("worker", 0)))
        w.pid = e.get("pid")
        w.host = e.get("host", "")
        w.device = e.get("device", "")
        w.code_fingerprint = e.get("code_fingerprint", "")
        w.exited, w.exit_code, w.exit_reason = False, None, ""
        w.last_t = t

    def _on_worker_metrics(self, e: dict[str, Any], t: float) -> None:
        w = self.worker(int(e.get("worker", 0)))
        w.epoch = e.get("epoch", w.epoch)
        w.step = e.get("step", w.step)
        w.samples = e.get("samples", w.samples)
        w.loss = num(e.get("loss"))
        w.acc = num(e.get("acc"))
        w.images_per_s = num(e.get("images_per_s"))
        w.staleness = e.get("staleness", w.staleness)
        w.timing = e.get("timing") or w.timing
        w.last_t = t

    def _on_ps_metrics(self, e: dict[str, Any], t: float) -> None:
        s = self.server
        s.version = e.get("version", s.version)
        s.epoch = e.get("epoch", s.epoch)
        s.samples_seen = e.get("samples_seen", s.samples_seen)
        s.updates_per_s = num(e.get("updates_per_s"))
        stal = e.get("staleness") or {}
        s.staleness_p50, s.staleness_p95 = num(stal.get("p50")), num(stal.get("p95"))
        s.staleness_max = num(stal.get("max"))
        s.dropped = e.get("dropped", s.dropped)
        s.lr = num(e.get("lr"))
        s.apply_ms = num(e.get("apply_ms"))
        s.live_workers = e.get("live_workers", s.live_workers)

    def _on_validation(self, e: dict[str, Any], t: float) -> None:
        v = Validation(t, e.get("version"), e.get("epoch"), num(e.get("loss")), num(e.get("acc")),
                       num(e.get("chance")))
        self.validations.append(v)
        if v.acc is not None and math.isfinite(v.acc):
            self.best_val_acc = v.acc if self.best_val_acc is None else max(self.best_val_acc, v.acc)

    def _on_epoch_end(self, e: dict[str, Any], t: float) -> None:
        self.epochs_done = max(self.epochs_done, int(e.get("epoch", -1)) + 1)
        if e.get("version") is not None:  # newer than the last ps_metrics: a stop now is here
            self.server.version = max(self.server.version or 0, int(e["version"]))

    def _on_checkpoint(self, e: dict[str, Any], t: float) -> None:
        self.checkpoints.append(Checkpoint(t, e.get("tag", ""), e.get("path", ""), e.get("version"),
                                           e.get("epoch"), num(e.get("val_acc"))))

    def _on_alert(self, e: dict[str, Any], t: float) -> None:
        self.alerts.append(Alert(t, e.get("level", "warning"), e.get("code", ""),
                                 e.get("message", ""), e.get("worker")))

    def _on_process_exit(self, e: dict[str, Any], t: float) -> None:
        role, pid, code = e.get("role"), e.get("pid"), e.get("code")
        proc: ProcessState = self.worker(int(e.get("worker") or 0)) if role == "worker" else self.server
        if proc.exited and proc.pid == pid:
            if code is None or proc.exit_code is not None:
                return  # the same exit, reported again (the monitor saw it, the supervisor wrote it)
            # The PS only knew "gone"; the supervisor knows the code: report that instead.
            self.alerts = deque((a for a in self.alerts if not (a.code == AlertCode.PROCESS_EXIT and a.pid == pid)),
                                maxlen=MAX_ALERTS)
        proc.pid = pid or proc.pid
        proc.exited, proc.exit_code, proc.exit_reason = True, code, e.get("reason", "")
        # A failed or lost process is news; a clean exit (code 0: a stop, or the end) is not.
        if code != 0:
            name = f"worker {e.get('worker')}" if role == "worker" else role
            level = "error" if code not in (0, None) else "warning"
            self.alerts.append(Alert(t, level, AlertCode.PROCESS_EXIT,
                                     f"{name} (pid {pid}) {describe_exit(code)}", e.get("worker"), pid))

    def _on_worker_restart(self, e: dict[str, Any], t: float) -> None:
        limit = f" {e.get('restart')} of {e.get('max_restarts')}" if e.get("max_restarts") else ""
        self.alerts.append(Alert(t, "warning", "worker_restart",
                                 f"{e.get('reason')}: the job restarted from a checkpoint to bring "
                                 f"worker {e.get('worker')} back (restart{limit})", e.get("worker")))

    def _on_run_end(self, e: dict[str, Any], t: float) -> None:
        self.outcome = e.get("outcome", "finished")
        self.end_message = e.get("message", "")
        self.end_t = t
        best = num(e.get("best_val_acc"))
        if best is not None:
            self.best_val_acc = best
