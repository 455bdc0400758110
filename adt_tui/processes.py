"""Process helpers every front end needs: signal or kill a job's processes, tell whether a pid
is one of them, and say how one ended. No Textual, no job state."""

from __future__ import annotations

import os
from pathlib import Path

import psutil


def signal_group(pid: int, sig: int) -> None:
    """Signal a child and everything it started."""
    try:
        os.killpg(pid, sig)  # each child leads its own session, so its pgid is its pid
    except (ProcessLookupError, PermissionError):
        pass


def describe_exit(code: int | None) -> str:
    return "was killed" if code is not None and code < 0 else f"exited with code {code}"


def is_job_process(pid: int, run_dir: Path) -> bool:
    """True if `pid` is alive and is an `engine.node` process of this run dir."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return "engine.node" in cmdline and str(run_dir) in cmdline


def kill_all(procs: list[psutil.Process]) -> None:
    """SIGKILL each process (gone ones are fine) and reap them."""
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=5)
