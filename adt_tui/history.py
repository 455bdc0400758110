"""Run history: what `runs/` holds, for `adt runs` and `adt clean` (and the runs `adt report` reads).

A run is read from its `config.json` and `events.jsonl` only (no torch). Its state:
`running` while a process in its `pids.json` still runs this run's `engine.node`; else how its last
`run_end` after its last `run_start` says it ended (finished, stopped, failed, diverged);
`crashed` when it started but never wrote `run_end` and nothing runs; `new` when it never started.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from engine.config import ConfigError
from engine.rundir import RunDir

from .state import RunState
from .supervisor import Supervisor

STATES = ("running", "finished", "stopped", "failed", "diverged", "crashed", "new")


@dataclass
class RunInfo:
    """One row of the history."""

    run_id: str
    run_dir: str
    started: float | None  # Unix time of the first run_start (config.json's mtime if none)
    state: str
    model: str
    workers: int
    data: str
    best_val_acc: float | None
    code: str | None  # code fingerprint of the last start
    duration: float | None  # seconds of training, summed over resumed segments
    checkpoint_dir: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_info(run_dir: str | Path, checkpoints_dir: str | Path = "checkpoints",
             run: RunState | None = None) -> RunInfo:
    """Read one run directory (which must hold config.json); `run`: its events, already folded."""
    run_dir = Path(run_dir).resolve()
    config = RunDir(run_dir).read_config()
    if run is None:
        run = read_run(run_dir)
    running = _alive(run_dir)
    if running:
        state = "running"
    elif run.outcome:
        state = run.outcome  # the last start's: a resumed run's earlier ends do not count
    else:
        state = "crashed" if run.events else "new"
    return RunInfo(
        run_id=run_dir.name,
        run_dir=str(run_dir),
        started=run.start_t if run.starts else RunDir(run_dir).config.stat().st_mtime,
        state=state,
        model=config.get("model", "?"),
        workers=int(config.get("workers", 0)),
        data=config.get("train_url") or config.get("data", "?"),
        best_val_acc=run.best_val_acc,
        code=run.code.get("fingerprint"),
        duration=run.trained(time.time() if running else None),
        checkpoint_dir=run.checkpoint_dir or str(Path(checkpoints_dir).resolve() / run_dir.name),
    )


def read_run(run_dir: Path) -> RunState:
    """A run's events through the monitor's fold (empty when it never wrote one)."""
    events = RunDir(run_dir).events
    return RunState.from_file(events) if events.is_file() else RunState()


def list_runs(runs_dir: str | Path = "runs", checkpoints_dir: str | Path = "checkpoints") -> list[RunInfo]:
    """Every run under `runs_dir`, newest first."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    runs = [run_info(d, checkpoints_dir) for d in root.iterdir() if RunDir(d).is_run()]
    return sorted(runs, key=lambda r: r.started or 0, reverse=True)


def find_run(run_id: str, runs_dir: str | Path = "runs") -> Path:
    """A run's directory from its id (or from its path)."""
    for candidate in (Path(runs_dir) / run_id, Path(run_id)):
        if RunDir(candidate).is_run():
            return candidate.resolve()
    raise ConfigError("run_id", f"names {run_id!r}, which is not a run in {Path(runs_dir).resolve()}",
                      "pick an id from `adt runs` (or pass --runs-dir)", heading="no such run")


def runs_table(runs: list[RunInfo]) -> str:
    """The history as an aligned text table."""
    if not runs:
        return "no runs yet: start one with `adt run`"
    header = ("ID", "STARTED", "STATE", "MODEL", "WORKERS", "DATA", "BEST VAL", "CODE", "DURATION")
    rows = [header] + [(
        r.run_id,
        time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started)) if r.started else "-",
        r.state, r.model, str(r.workers), _short_path(r.data),
        f"{r.best_val_acc:.2%}" if r.best_val_acc is not None else "-",
        r.code or "-", format_duration(r.duration),
    ) for r in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def parse_age(text: str) -> float:
    """`90s`, `30m`, `12h`, `7d`, `2w` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if not match:
        raise ConfigError("older_than", f"is {text!r}", "write a number and a unit, e.g. 30m, 12h, 7d, 2w")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
    return float(match.group(1)) * unit


def select_runs(runs: list[RunInfo], ids: list[str], state: str | None,
                older_than: float | None, now: float | None = None) -> list[RunInfo]:
    """The runs matching every given criterion (ids, state, age)."""
    known = {r.run_id for r in runs}
    for run_id in ids:
        if run_id not in known:
            raise ConfigError("run_id", f"names {run_id!r}, which is not a run here",
                              "pick an id from `adt runs` (or pass --runs-dir)")
    now = time.time() if now is None else now
    return [r for r in runs
            if (not ids or r.run_id in ids)
            and (state is None or r.state == state)
            and (older_than is None or (r.started is not None and now - r.started > older_than))]


def clean(runs_dir: str | Path, checkpoints_dir: str | Path, ids: list[str], state: str | None,
          older_than: str | None, yes: bool, out: TextIO | None = None,
          ask: Callable[[str], str] = input) -> int:
    """`adt clean`: remove the chosen runs and their checkpoints, after asking; 0 done, 1 declined."""
    out = out or sys.stdout
    if not ids and state is None and older_than is None:
        raise ConfigError("clean", "was given no run id, --state or --older-than",
                          "name what to remove, e.g. `adt clean --state failed`")
    if state is not None and state not in STATES:
        raise ConfigError("state", f"is {state!r}", f"use one of {', '.join(STATES)}")
    chosen = select_runs(list_runs(runs_dir, checkpoints_dir), ids, state,
                         parse_age(older_than) if older_than else None)
    running = [r for r in chosen if r.state == "running"]
    for r in running:
        print(f"keeping {r.run_id}: it is running (stop it first)", file=out)
    chosen = [r for r in chosen if r.state != "running"]
    if not chosen:
        print("nothing to remove", file=out)
        return 0
    print(f"to remove ({len(chosen)} runs):", file=out)
    for r in chosen:
        checkpoints = Path(r.checkpoint_dir)
        print(f"  {r.run_id}  {r.state:<8}  {_size(Path(r.run_dir), checkpoints):>9}  "
              f"{r.run_dir}" + (f" + {checkpoints}" if checkpoints.is_dir() else ""), file=out)
    out.flush()
    if not yes:
        try:
            answer = ask("Remove these runs and their checkpoints? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing removed", file=out)
            return 1
    for r in chosen:
        if _alive(Path(r.run_dir)):  # it may have been resumed while we asked
            print(f"keeping {r.run_id}: it started running", file=out)
            continue
        shutil.rmtree(r.run_dir, ignore_errors=True)
        checkpoints = Path(r.checkpoint_dir)
        if checkpoints.name == r.run_id:  # never remove a directory that is not this run's own
            shutil.rmtree(checkpoints, ignore_errors=True)
        print(f"removed {r.run_id}", file=out)
    return 0


def _alive(run_dir: Path) -> bool:
    if not RunDir(run_dir).pids.is_file():
        return False
    try:
        return any(c.running for c in Supervisor.attach(run_dir).children)
    except (OSError, ValueError, TypeError, ConfigError):
        return False


def _size(*paths: Path) -> str:
    total = float(sum(p.stat().st_size for path in paths if path.exists()
                      for p in path.rglob("*") if p.is_file()))
    for unit in ("B", "kB", "MB"):
        if total < 1024:
            return f"{total:.0f} {unit}" if unit == "B" else f"{total:.1f} {unit}"
        total /= 1024
    return f"{total:.1f} GB"


def _short_path(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path

