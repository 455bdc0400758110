"""`adt run --no-ui`: the same job as the monitor, printed as plain progress for servers and CI."""

from __future__ import annotations

import asyncio
import queue
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from engine.config import RunConfig
from engine.events import EventTail
from engine.rundir import RunDir

from .compare import Comparison, Reference, Standing
from .controller import BringBack, JobController
from .launch import prepare_job
from .series import Curves
from .state import RunState
from .tensorboard import TensorBoardWriter
from .watcher import SourceWatcher


class Printer:
    """Turns events into human lines; a progress bar per epoch when the output is a terminal."""

    def __init__(self, out: TextIO, comparison: Comparison | None = None) -> None:
        self.out = out
        # Where this run stands against --compare's run, or else against one process (if known).
        self.comparison = comparison or Comparison()
        self.tty = out.isatty()
        self.train_samples = 0
        self.epochs = 0
        self.interval = 1.0  # seconds a progress line's staleness covers (--log-interval)
        self.epoch_base = 0  # samples_seen when the current epoch began
        self.last_plain = 0.0
        self.bar_open = False
        self.run = RunState()  # the monitor's fold of this start's events: where the run is

    @property
    def curves(self) -> Curves:
        return self.run.curves

    @property
    def outcome(self) -> str | None:
        """How this start ended, once its run_end came (None after a stop of ours: it goes on)."""
        return self.run.outcome

    @outcome.setter
    def outcome(self, value: str | None) -> None:
        self.run.outcome = value

    def line(self, text: str) -> None:
        if self.bar_open:
            self.out.write("\n")
            self.bar_open = False
        self.out.write(text + "\n")
        self.out.flush()

    def event(self, e: dict[str, Any]) -> None:
        self.run.apply(e)
        self.comparison.apply(e)
        kind = e["kind"]
        if kind == "run_start":
            self.train_samples, self.epochs = e["train_samples"], e["config"]["epochs"]
            self.interval = e["config"]["log_interval"]
            self.line(f"run {e['run_id']}: {e['model']}, {e['mode']} with {e['workers']} workers, "
                      f"{e['train_samples']} train / {e['val_samples']} val samples, "
                      f"code {e['code']['fingerprint']}" + (" (resumed)" if e["resumed"] else ""))
            self.line(f"  train data: {_span(e['data']['train'])}")
            self.line(f"  val data:   {_span(e['data']['val'])}")
            self.line(f"  checkpoints: {e['checkpoint_dir']}")
            if self.comparison.reference is not None:
                self.line(f"  compared with: {self.comparison.reference.describe()}")
                warning = self.comparison.not_comparable(e)
                if warning:
                    self.line(f"WARNING: {warning}")
        elif kind == "worker_join":
            self.line(f"worker {e['worker']} joined (pid {e['pid']}, {e['device']}, "
                      f"{len(e['shards'])} shards)")
        elif kind == "ps_metrics":
            self._progress(e)
        elif kind == "validation":
            versus = self._versus()
            self.line(f"validation @ version {e['version']}: loss {_num(e['loss'])}, "
                      f"acc {e['acc']:.2%} ({e['count']} samples, chance {e['chance']:.2%})"
                      + (f"; {versus.text()}" if versus else ""))
            lag = self.comparison.new_lag(self.curves)
            if lag:
                self.line(f"WARNING: {lag}")
        elif kind == "epoch_end":
            self.epoch_base = e["samples_seen"]
            self.line(f"epoch {min(e['epoch'] + 1, self.epochs)}/{self.epochs} done at version {e['version']}")
        elif kind == "checkpoint":
            self.line(f"checkpoint {e['tag']}: {e['path']}")
        elif kind == "alert":
            self.line(f"{e['level'].upper()}: {e['message']}")
        elif kind == "run_end":
            best = e.get("best_val_acc")
            self.line(f"run {e['outcome']}: {e['message']}"
                      + (f"; version {e['version']}" if e["version"] is not None else "")
                      + (f", best val acc {best:.2%}" if isinstance(best, float) else ""))
            summary = curve_summary(self.curves)
            if summary:
                self.line(summary)
            versus = self._versus()
            if versus:
                self.line(f"against the reference: {versus.text()}")

    def _versus(self) -> Standing | None:
        self.comparison.refresh()  # a reference still running has grown
        return self.comparison.standing(self.curves)

    def _progress(self, e: dict[str, Any]) -> None:
        if e["epoch"] >= self.epochs:  # after the last epoch's end: nothing left to count
            return
        done = max(0, e["samples_seen"] - self.epoch_base)
        total = max(self.train_samples, 1)
        stale = e["staleness"]
        p50 = "-" if stale["p50"] is None else f"{stale['p50']:g}"
        text = (f"epoch {e['epoch'] + 1}/{self.epochs} {min(done, total)}/{total} | version {e['version']} "
                f"| {e['updates_per_s']:.1f} upd/s | staleness p50 {p50} max {stale['max']} "
                f"(last {self.interval:g}s) | dropped {e['dropped']}")
        versus = self.comparison.standing(self.curves)
        if versus:
            text += f" | {versus.short()}"
        if self.tty:
            filled = int(24 * min(done, total) / total)
            line = f"[{'#' * filled}{'.' * (24 - filled)}] {text}"
            width = shutil.get_terminal_size().columns - 1  # a wrapped \r line cannot be redrawn
            self.out.write(f"\r{line[:width]}\033[K")
            self.out.flush()
            self.bar_open = True
        elif time.monotonic() - self.last_plain >= 5:
            self.last_plain = time.monotonic()
            self.line(text)


def curve_summary(curves: Curves) -> str:
    """One line on how the curves went: what the monitor's charts show, for a log."""
    parts = []
    firsts = [s.y[0] for s in curves.train_loss.values() if len(s)]
    lasts = [s.y[-1] for s in curves.train_loss.values() if len(s)]
    if firsts:
        parts.append(f"train loss {sum(firsts) / len(firsts):.3g} -> {sum(lasts) / len(lasts):.3g} "
                     f"(mean of {len(lasts)} worker{'s' if len(lasts) > 1 else ''})")
    acc = curves.val_acc
    if len(acc):
        best = max(range(len(acc)), key=acc.y.__getitem__)
        parts.append(f"val acc {acc.y[0]:.1%} -> {acc.y[-1]:.1%} (best {acc.y[best]:.1%} at "
                     f"{acc.x[best]:,.0f} samples)")
    if curves.staleness_counts:
        pushes = sum(curves.staleness_counts.values())
        parts.append(f"staleness of all {pushes:,} pushes: median {curves.staleness_median():g}, "
                     f"max {max(curves.staleness_counts)}")
    return "curves: " + "; ".join(parts) if parts else ""


def _span(paths: list[str]) -> str:
    return paths[0] if len(paths) == 1 else f"{paths[0]} ... ({len(paths)} shards)"


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


class StaleCodeWarner:
    """The monitor's source watcher for headless runs: one warning line per burst of changes that
    leaves the job's files different from what it started with. Runs its own event loop on a
    thread; `warnings()` hands the lines to the printing thread."""

    def __init__(self, job: JobController) -> None:
        """Judged by the job's controller's StaleCode, of its current start."""
        self.job = job
        self._lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._watcher: SourceWatcher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _changed(self, paths: tuple[str, ...], _at: float) -> None:
        stale = self.job.stale
        if stale is None or not stale.changed(paths, stale.sources.fingerprint):
            return
        what, then = (("config", "use it") if all(stale.sources.is_config(p) for p in paths)
                      else ("source", "run the new code"))
        self._lines.put(f"WARNING: {what} changed under the running job: "
                        f"{', '.join(stale.sources.names(paths))}; restart to {then} "
                        f"(started with code {stale.sources.fingerprint}, now {stale.now})")

    def start(self) -> None:
        """Watch the job's files (once it started: its controller knows them then)."""
        assert self.job.stale is not None
        self._watcher = watcher = SourceWatcher(self.job.stale.sources.paths, self._changed)
        self._loop = loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=lambda: loop.run_until_complete(watcher.run()),
                                        name="adt-source-watch", daemon=True)
        self._thread.start()

    def warnings(self) -> list[str]:
        lines = []
        while not self._lines.empty():
            lines.append(self._lines.get())
        return lines

    def stop(self) -> None:
        if self._thread is None or self._loop is None or self._watcher is None:
            return
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._watcher.stop)
            self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()


def run_headless(config: RunConfig, out: TextIO = sys.stdout) -> int:
    """Run a job to its end, printing progress; returns the process exit code.

    A change to the job's files (engine.sources.job_sources) prints a warning naming them.
    """
    prepare_job(config, out)  # raises ConfigError/DataError/CheckpointError before any process starts
    job = JobController(config)
    events_path = RunDir(job.run_dir).events
    # A resumed run appends to its old events: print (and judge the outcome by) this start's only.
    offset = events_path.stat().st_size if events_path.exists() else 0
    printer = Printer(out, Comparison(Reference(config.compare, config.runs_dir) if config.compare else None))
    tail = EventTail(events_path, offset)
    tensorboard = TensorBoardWriter(config.tensorboard, config.run_id) if config.tensorboard else None
    interrupted = False

    def catch_up() -> None:
        """Print the new events (and write them to TensorBoard, with --tensorboard)."""
        events = tail.poll()
        for e in events:
            printer.event(e)
        if tensorboard is not None:
            tensorboard.write_all(events)
            tensorboard.flush()

    def on_term(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    stale = StaleCodeWarner(job)
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        run_dir = job.start()
        stale.start()
        printer.line(f"run dir: {run_dir}   (logs in {run_dir / 'logs'})")
        while True:
            catch_up()
            for line in stale.warnings():
                printer.line(line)
            main = job.main_child()
            for child in job.poll():
                if child is not main and child.exit_code != 0:
                    printer.line(f"ERROR: {child.label} (pid {child.pid}) exited with code "
                                 f"{child.exit_code}; see {child.log_path}")
            command = job.restart_due()
            if command is not None:
                bring_back(job, command, printer, catch_up)
                continue
            if not main.running:
                # The PS is gone: give workers a moment to see it, then stop what is left.
                if not job.supervisor.wait(5):
                    job.stop(grace=5)
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        interrupted = True
        job.stop_after_ctrl_c(printer.line, "the job", config.grace_period)
    finally:
        signal.signal(signal.SIGTERM, previous)
        stale.stop()
    catch_up()
    if tensorboard is not None:
        tensorboard.close()
        printer.line(f"TensorBoard: tensorboard --logdir {tensorboard.path.parent}")
    return finish(job, printer, interrupted)


def bring_back(job: JobController, command: BringBack, printer: Printer, catch_up: Callable[[], None]) -> None:
    """Restart the job from a checkpoint taken now, so the lost worker trains again."""
    used = job.restarts.get(command.worker, 0) + 1
    printer.line(f"{command.why}: restarting the job from a checkpoint taken now to bring it back "
                 f"(restart {used} of {job.config.max_restarts})")
    job.stop()
    job.finish(run_ended=True)  # the PS wrote its run_end as it stopped
    restarted = job.main_child().exit_code == 0 and job.restart(command) is not None
    catch_up()
    if restarted:
        printer.outcome = None  # the stop was ours: the run goes on
    else:
        printer.line("not restarted: the PS wrote no checkpoint to resume from")


def finish(job: JobController, printer: Printer, interrupted: bool) -> int:
    """Record process exits (the PS is gone, so we are the writer now) and pick the exit code."""
    job.finish(run_ended=printer.outcome is not None)
    job.release()
    main = job.main_child()
    if printer.outcome is None and interrupted and job.stopped_cleanly():
        printer.line(stopped_where(printer))  # the PS could not say so itself
    elif printer.outcome is None:
        printer.line(f"run failed: {main.label} exited with code {main.exit_code} before the run "
                     f"ended; see {main.log_path}")
        tail = _log_tail(main.log_path)
        if tail:
            printer.line(tail)
    return job.exit_code(printer.outcome, interrupted)


def stopped_where(printer: Printer) -> str:
    """Where a run stopped before its PS wrote `run_end`: still starting, or how far it got."""
    seen = printer.run.server
    if seen.updates_per_s is None or not seen.version:  # no ps_metrics yet, or no update
        return "run stopped while starting: nothing to save"
    saved = printer.run.checkpoints[-1] if printer.run.checkpoints else None
    kept = (f"its last checkpoint {saved.path} holds version {saved.version}" if saved
            else "no checkpoint was written")
    return (f"run stopped at version {seen.version} (epoch {(seen.epoch or 0) + 1}) before the PS "
            f"wrote its end; {kept}")


def _log_tail(path: Path, lines: int = 6) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
