"""NVIDIA MPS for one job (`--mps`): the job's processes on a GPU run their kernels side by side
instead of taking turns (docs/BENCHMARKS.md "Engine speed": two workers on one H200 went from
0.73x to 0.95x of one process).

The job gets its own MPS control daemon behind a private pipe folder that only the job's
processes are told of, so nothing else on the machine goes through it. A keeper process owns the
daemon and quits it when the job is over: when the supervisor says so (SIGTERM), or when the
supervisor is gone and no process of the job is left, so a killed monitor leaves no daemon behind.
A CUDA process that cannot reach the daemon runs as it would without MPS.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from engine.config import ConfigError
from engine.rundir import RunDir

from .processes import is_job_process

CONTROL = "nvidia-cuda-mps-control"
START_TIMEOUT = 30.0  # seconds for the daemon to answer its first command


@dataclass
class Mps:
    keeper: subprocess.Popen
    env: dict[str, str]  # for the job's processes: where the daemon listens

    def quit(self) -> None:
        """Quit the daemon and wait for the keeper (idempotent)."""
        if self.keeper.poll() is None:
            self.keeper.send_signal(signal.SIGTERM)
        try:
            self.keeper.wait(START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.keeper.kill()
            self.keeper.wait()


def require_mps() -> None:
    """Raise ConfigError (before anything starts) if this machine cannot run MPS."""
    if shutil.which(CONTROL) is None:
        raise ConfigError("mps", f"is on, but NVIDIA's `{CONTROL}` is not on PATH",
                          "install the NVIDIA driver's utilities (they ship it), or run without --mps")


def start_mps(run_dir: Path, python: str = sys.executable) -> Mps:
    """Start the job's daemon through a keeper; returns once it answers. Raises ConfigError."""
    require_mps()
    folder = tempfile.mkdtemp(prefix="adt-mps-")  # short: the daemon's socket paths must fit 108 bytes
    keeper = subprocess.Popen([python, "-m", "adt_tui.mps", str(run_dir), folder], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    with keeper.stdout:  # type: ignore[union-attr]
        answer = keeper.stdout.readline().strip()  # type: ignore[union-attr]
    if answer != "ready":
        keeper.wait()
        raise ConfigError("mps", f"is on, but the job's MPS daemon did not start ({answer or 'no answer'})",
                          f"see {run_dir / 'logs' / 'mps.log'}, or run without --mps")
    return Mps(keeper, {"CUDA_MPS_PIPE_DIRECTORY": folder, "CUDA_MPS_LOG_DIRECTORY": folder,
                        **client_devices(os.environ.get("CUDA_VISIBLE_DEVICES"))})


def client_devices(visible: str | None) -> dict[str, str]:
    """The job's CUDA_VISIBLE_DEVICES under MPS. The daemon starts with the user's choice (e.g.
    "1"), and its server numbers those GPUs from 0; a client asking for GPU 1 would find none.
    So the clients are given the server's numbering: "0", "0,1", ..."""
    if visible is None:
        return {}
    count = len([d for d in visible.split(",") if d.strip()])
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(count))}


def keep(run_dir: Path, folder: Path) -> int:
    """The keeper: start the daemon, say "ready" on stdout, quit it when the job is over."""
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(folder), "CUDA_MPS_LOG_DIRECTORY": str(folder)}
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when the job is over
    supervisor = os.getppid()
    RunDir(run_dir).logs.mkdir(parents=True, exist_ok=True)
    with open(RunDir(run_dir).log("mps"), "ab") as log:
        daemon = subprocess.Popen([CONTROL, "-f"], env=env, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    try:
        problem = _wait_until_answering(daemon, env)
        print(problem or "ready", flush=True)
        if problem:
            return 1
        while not done.wait(1.0) and daemon.poll() is None:
            if os.getppid() != supervisor and not _job_alive(run_dir):
                break
        return 0
    finally:
        if daemon.poll() is None:
            _command("quit", env)
            try:
                daemon.wait(START_TIMEOUT)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _die_with_parent() -> None:
    """In the daemon before it starts: SIGTERM when its keeper dies, even of SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def _wait_until_answering(daemon: subprocess.Popen, env: dict[str, str]) -> str:
    """"" once the daemon answers a command, else why not."""
    deadline = time.monotonic() + START_TIMEOUT
    while daemon.poll() is None:
        if _command("get_server_list", env) is not None:
            return ""
        if time.monotonic() > deadline:
            return f"{CONTROL} did not answer within {START_TIMEOUT:g} s"
        time.sleep(0.1)  # the daemon offers no readiness signal: ask again
    return f"{CONTROL} -f exited with code {daemon.returncode}"


def _command(text: str, env: dict[str, str]) -> str | None:
    """Send one command to the daemon; its reply, or None if it did not take it."""
    try:
        done = subprocess.run([CONTROL], input=text + "\n", env=env, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _job_alive(run_dir: Path) -> bool:

    return any(is_job_process(pid, run_dir) for pid in RunDir(run_dir).read_pids().values())


if __name__ == "__main__":
    raise SystemExit(keep(Path(sys.argv[1]), Path(sys.argv[2])))
