"""`adt run --no-ui`: the same job as the monitor, printed as plain progress for servers and CI."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from engine.config import RunConfig
from engine.events import EventTail, EventWriter

from .launch import prepare_job
from .supervisor import Supervisor

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class Printer:
    """Turns events into human lines; a progress bar per epoch when the output is a terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.train_samples = 0
        self.epochs = 0
        self.epoch_base = 0  # samples_seen when the current epoch began
        self.last_plain = 0.0
        self.bar_open = False
        self.outcome: str | None = None

    def line(self, text: str) -> None:
        if self.bar_open:
            self.out.write("\n")
            self.bar_open = False
        self.out.write(text + "\n")
        self.out.flush()

    def event(self, e: dict[str, Any]) -> None:
        kind = e["kind"]
        if kind == "run_start":
            self.train_samples, self.epochs = e["train_samples"], e["config"]["epochs"]
            self.line(f"run {e['run_id']}: {e['model']}, {e['mode']} with {e['workers']} workers, "
                      f"{e['train_samples']} train / {e['val_samples']} val samples, "
                      f"code {e['code']['fingerprint']}" + (" (resumed)" if e["resumed"] else ""))
            self.line(f"  train data: {_span(e['data']['train'])}")
            self.line(f"  val data:   {_span(e['data']['val'])}")
            self.line(f"  checkpoints: {e['checkpoint_dir']}")
        elif kind == "worker_join":
            self.line(f"worker {e['worker']} joined (pid {e['pid']}, {e['device']}, "
                      f"{len(e['shards'])} shards)")
        elif kind == "ps_metrics":
            self._progress(e)
        elif kind == "validation":
            self.line(f"validation @ version {e['version']}: loss {_num(e['loss'])}, "
                      f"acc {e['acc']:.2%} ({e['count']} samples, chance {e['chance']:.2%})")
        elif kind == "epoch_end":
            self.epoch_base = e["samples_seen"]
            self.line(f"epoch {e['epoch'] + 1}/{self.epochs} done at version {e['version']}")
        elif kind == "checkpoint":
            self.line(f"checkpoint {e['tag']}: {e['path']}")
        elif kind == "alert":
            self.line(f"{e['level'].upper()}: {e['message']}")
        elif kind == "run_end":
            self.outcome = e["outcome"]
            best = e.get("best_val_acc")
            self.line(f"run {e['outcome']}: {e['message']}; version {e['version']}"
                      + (f", best val acc {best:.2%}" if isinstance(best, float) else ""))

    def _progress(self, e: dict[str, Any]) -> None:
        done = max(0, e["samples_seen"] - self.epoch_base)
        total = max(self.train_samples, 1)
        stale = e["staleness"]
        text = (f"epoch {e['epoch'] + 1}/{self.epochs} {min(done, total)}/{total} | version {e['version']} "
                f"| {e['updates_per_s']:.1f} upd/s | staleness p50 {stale['p50']} max {stale['max']} "
                f"| dropped {e['dropped']}")
        if self.tty:
            filled = int(24 * min(done, total) / total)
            self.out.write(f"\r[{'#' * filled}{'.' * (24 - filled)}] {text}\033[K")
            self.out.flush()
            self.bar_open = True
        elif time.monotonic() - self.last_plain >= 5:
            self.last_plain = time.monotonic()
            self.line(text)


def _span(paths: list[str]) -> str:
    return paths[0] if len(paths) == 1 else f"{paths[0]} ... ({len(paths)} shards)"


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def run_headless(config: RunConfig, out: TextIO = sys.stdout) -> int:
    """Run a job to its end, printing progress; returns the process exit code."""
    prepare_job(config, out)  # raises ConfigError/DataError before any process starts
    supervisor = Supervisor(config)
    run_dir = supervisor.start()
    printer = Printer(out)
    printer.line(f"run dir: {run_dir}   (logs in {run_dir / 'logs'})")
    tail = EventTail(run_dir / "events.jsonl")
    interrupted = False

    def on_term(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        main = supervisor.main_child()
        while True:
            for e in tail.poll():
                printer.event(e)
            for child in supervisor.poll():
                if child is not main and child.exit_code != 0:
                    printer.line(f"ERROR: {child.name} (pid {child.pid}) exited with code "
                                 f"{child.exit_code}; see {child.log_path}")
            if not main.running:
                # The PS is gone: give workers a moment to see it, then stop what is left.
                if not supervisor.wait(5):
                    supervisor.stop(grace=5)
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        interrupted = True
        printer.line(f"stopping (grace period {config.grace_period:.0f}s; the PS writes a final checkpoint)...")
        try:
            supervisor.stop()
        except KeyboardInterrupt:
            supervisor.kill()
    finally:
        signal.signal(signal.SIGTERM, previous)
    for e in tail.poll():
        printer.event(e)
    return finish(supervisor, printer, interrupted)


def finish(supervisor: Supervisor, printer: Printer, interrupted: bool) -> int:
    """Record process exits (the PS is gone, so we are the writer now) and pick the exit code."""
    writer = EventWriter(supervisor.run_dir / "events.jsonl", supervisor.run_id)
    for child in supervisor.children:
        writer.emit("process_exit", role=child.role, worker=child.worker, pid=child.pid,
                    code=child.exit_code, reason="exited")
    main = supervisor.main_child()
    if printer.outcome is None:
        message = f"{main.name} exited with code {main.exit_code} before the run ended; see {main.log_path}"
        writer.emit("run_end", outcome="failed", version=None, epoch=None, best_val_acc=None, message=message)
        printer.line(f"run failed: {message}")
        tail = _log_tail(main.log_path)
        if tail:
            printer.line(tail)
    writer.close()
    if main.exit_code == EXIT_BAD_INPUT:
        return EXIT_BAD_INPUT
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if printer.outcome == "finished" else EXIT_FAILED


def _log_tail(path: Path, lines: int = 6) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
