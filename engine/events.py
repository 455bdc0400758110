"""The run's event stream: one versioned JSON-lines file, `runs/<run-id>/events.jsonl`.

The parameter server is its one writer while it runs; monitors, the headless printer and reports
only read it. The schema is documented in docs/events.md. No torch import here on purpose: a
reader of the stream must start fast and run anywhere.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Iterator
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

# Every kind a run can write, in the order a run usually writes them.
KINDS = (
    "run_start",
    "worker_join",
    "worker_metrics",
    "ps_metrics",
    "validation",
    "epoch_end",
    "checkpoint",
    "alert",
    "process_exit",
    "worker_restart",
    "run_end",
)


class AlertCode(StrEnum):
    """Every `alert` event's code (docs/events.md). A StrEnum: it is written, and compares, as
    its string."""

    STALE_CODE = "stale_code"  # the code on disk changed under the running job
    RULE_CHANGED = "rule_changed"  # resumed with another update rule
    LOSS_NAN = "loss_nan"
    VAL_LOSS_NAN = "val_loss_nan"
    VAL_LOSS_HIGH = "val_loss_high"
    CHANCE_ACCURACY = "chance_accuracy"
    DATA_MISMATCH = "data_mismatch"  # a worker's copy of the data differs from the PS's
    FINGERPRINT_MISMATCH = "fingerprint_mismatch"  # a worker runs other code than the run started with
    WORKER_LOST = "worker_lost"
    WORKER_SILENT = "worker_silent"
    WORKER_FAILED = "worker_failed"
    CHECKPOINT_FAILED = "checkpoint_failed"
    STALENESS_HIGH = "staleness_high"
    PROCESS_EXIT = "process_exit"  # the monitors' own, from process_exit events
    ASYNC_LAGS = "async_lags"  # the monitors' own: behind the --compare reference, and why


class ExitCode(IntEnum):
    """How `adt`, its runners and every engine process end."""

    OK = 0
    FAILED = 1
    BAD_INPUT = 2  # a config, data or checkpoint problem, said before training starts
    INTERRUPTED = 130  # Ctrl+C (128 + SIGINT), as shells report it


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as strings so a reader sees them, never a parse error."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class EventWriter:
    """Appends one JSON object per line; thread-safe; each line is flushed as it is written."""

    def __init__(self, path: str | Path, run_id: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8")

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        event = {"v": SCHEMA_VERSION, "t": round(time.time(), 3), "kind": kind, "run_id": self.run_id}
        event.update(_clean(fields))
        line = json.dumps(event, separators=(",", ":")) + "\n"
        with self._lock:
            if not self._file.closed:
                self._file.write(line)
                self._file.flush()
        return event

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()


def parse_line(line: str) -> dict[str, Any] | None:
    """One event, or None for a blank or torn line (a writer killed mid-line)."""
    line = line.strip()
    if not line:
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "kind" in event else None


def read_events(path: str | Path) -> Iterator[dict[str, Any]]:
    """All complete events in a file, oldest first."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            event = parse_line(line)
            if event is not None:
                yield event


class EventTail:
    """Follows a growing events.jsonl: each `poll()` returns the events appended since the last."""

    def __init__(self, path: str | Path, offset: int = 0) -> None:
        """Follow `path` from byte `offset` (0: from the first event)."""
        self.path = Path(path)
        self._offset = offset
        self._partial = b""

    def poll(self, max_bytes: int = 1 << 24) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read(max_bytes)
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # an unfinished last line waits for the next poll
        events = []
        for raw in lines:
            event = parse_line(raw.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        return events
