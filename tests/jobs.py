"""Helpers for tests that run real jobs and break them: start one, wait for an event, time it.

No mocks: a job here is `python -m adt_tui.cli run --no-ui` (or the supervisor, or bare
`engine.node` processes) on tiny data, and every wait ends in a generous timeout with the job's
output in the failure message.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.events import read_events

from .conftest import ROOT, adt_command, child_env

# The fast settings every job here uses (tiny data, no loader processes, frequent metrics).
FAST = ("--loader-workers", "0", "--log-interval", "0.5", "--batch-size", "16")


def events_of(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [e for e in read_events(path) if kind is None or e["kind"] == kind]


def wait_for(what: str, check: Callable[[], Any], timeout: float, context: Callable[[], str] = str) -> Any:
    """Poll `check` until it returns something truthy; fail with `context()` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{context()}")


def latency(record_property: Callable[[str, Any], None], case: str, seconds: float) -> None:
    """Report a 'time from bad condition to alert/exit' (printed; in the JUnit XML as a property)."""
    print(f"[time-to-alert] {case}: {seconds:.2f}s")
    record_property(f"time_to_alert[{case}]", round(seconds, 3))


def copy_tree(dest: Path) -> Path:
    """A copy of the project's sources (engine/, adt_tui/), so a test can change code safely."""
    for name in ("engine", "adt_tui"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def tree_env(tree: Path) -> dict[str, str]:
    """The environment for processes that import the project from `tree` instead of the checkout."""
    env = child_env()
    env["PYTHONPATH"] = str(tree)
    return env


def change_source(tree: Path, relative: str = "engine/worker.py", note: str = "changed") -> Path:
    path = tree / relative
    with open(path, "a") as f:
        f.write(f"# {note}\n")
    return path


class HeadlessJob:
    """`adt run --no-ui ...` as a child process; a thread collects its output lines."""

    def __init__(self, tmp: Path, *flags: str, run_id: str = "job", tree: Path | None = None,
                 cwd: Path | None = None) -> None:
        self.runs, self.checkpoints = tmp / "runs", tmp / "checkpoints"
        self.run_dir = self.runs / run_id
        self.events_path = self.run_dir / "events.jsonl"
        self.checkpoint_dir = self.checkpoints / run_id
        cmd = adt_command("run", "--no-ui", "--runs-dir", str(self.runs),
                          "--checkpoints-dir", str(self.checkpoints), "--run-id", run_id, *flags)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=tree_env(tree) if tree else child_env(), cwd=cwd or tree or ROOT)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def context(self) -> str:
        logs = ""
        if (self.run_dir / "logs").is_dir():
            for log in sorted((self.run_dir / "logs").iterdir()):
                logs += f"\n--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        return f"--- output\n{self.output}{logs}"

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return events_of(self.events_path, kind)

    def wait_event(self, kind: str, timeout: float, where: Callable[[dict], bool] = lambda e: True,
                   ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            found = next((e for e in self.events(kind) if where(e)), None)
            if found is None and self.proc.poll() is not None:
                raise AssertionError(f"the job exited ({self.proc.returncode}) before a {kind} "
                                     f"event\n{self.context()}")
            return found

        return wait_for(f"a {kind} event", check, timeout, self.context)

    def pids(self) -> dict[str, int]:
        path = self.run_dir / "pids.json"
        wait_for("pids.json", path.exists, 60, self.context)
        return json.loads(path.read_text())["children"]

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the job did not end within {timeout:.0f}s\n{self.context()}") from None
        self._reader.join(5)
        return code


def spawn_node(tree: Path, rank: int, world: int, port: int, run_dir: Path) -> subprocess.Popen:
    """One `engine.node` process imported from `tree`, as torchrun would start it."""
    env = tree_env(tree)
    env.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               PYTHONUNBUFFERED="1", TP_SOCKET_IFNAME="lo", GLOO_SOCKET_IFNAME="lo")
    name = "ps" if rank == 0 else f"worker{rank - 1}"
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    with open(run_dir / "logs" / f"{name}.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "engine.node", "--run-dir", str(run_dir)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tree,
                                start_new_session=True)


def no_partial_files(directory: Path) -> list[str]:
    """Temp files a checkpoint writer left behind (there should be none)."""
    return [p.name for p in directory.glob(".*.tmp")] if directory.exists() else []


def hold_worker0_in_the_barrier(supervisor: Any, context: Callable[[], str] = str) -> None:
    """With a started 2-worker job: let both workers train, stop worker 1 (SIGSTOP), and wait
    until worker 0 waits for it at the epoch barrier (the RPC that has no timeout)."""
    import os
    import signal

    events = supervisor.run_dir / "events.jsonl"
    wait_for("both workers to train", lambda: {e["worker"] for e in events_of(events, "worker_metrics")}
             >= {0, 1}, 120, context)
    os.kill(next(c.pid for c in supervisor.children if c.name == "worker1"), signal.SIGSTOP)

    def worker0_waits() -> bool:  # it reports every 0.5 s while it trains
        mine = [e for e in events_of(events, "worker_metrics") if e["worker"] == 0]
        return time.time() - mine[-1]["t"] > 3

    wait_for("worker 0 to wait in the epoch barrier", worker0_waits, 60, context)

