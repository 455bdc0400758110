"""The supervisor: starts one start's processes of a job, watches them, stops them. The job's
life across starts (restarts, bring-backs, its end) is adt_tui/controller.py's.

Each child runs in its own session (so a terminal's Ctrl+C reaches only us, and we can signal a
child's whole tree); its stdout/stderr go to `runs/<id>/logs/<name>.log`. Stopping follows
torchrun's discipline: snapshot the trees, SIGTERM, wait the grace period, SIGKILL what is left.
The job is described by `runs/<id>/pids.json`, so `adt watch` can re-attach after a monitor dies.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from engine.config import RunConfig
from engine.listen import is_loopback
from engine.rundir import RunDir

from .mps import Mps, start_mps
from .processes import describe_exit, is_job_process, kill_all, signal_group  # noqa: F401 (re-exported)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Child:
    """One supervised process."""

    name: str  # "ps", "worker0", ..., or "single"
    role: str
    worker: int | None
    popen: subprocess.Popen | None
    log_path: Path
    pid: int = 0
    exit_code: int | None = None  # None while running, and for an attached child (code unknown)
    started: float = field(default_factory=time.time)
    exited: bool = False

    @property
    def running(self) -> bool:
        return not self.exited

    @property
    def label(self) -> str:
        """Its name for people, as every other line says it: "worker 0", "ps", "single"."""
        return f"worker {self.worker}" if self.role == "worker" else self.name


class Supervisor:
    """Start, watch and stop one job: a PS and N workers, or one single process (--workers 0)."""

    def __init__(self, config: RunConfig, python: str = sys.executable) -> None:
        self.config = config
        self.python = python
        self.children: list[Child] = []
        self.run_id = config.run_id or new_run_id()
        config.run_id = self.run_id
        self.run_dir = Path(config.runs_dir).resolve() / self.run_id
        self.stopping = False
        self.attached = False  # True: another adt started this job; we only watch (and may stop) it
        self.mps: Mps | None = None  # the job's own MPS daemon (--mps); a restart hands it on

    @classmethod
    def attach(cls, run_dir: str | Path) -> Supervisor:
        """A supervisor for a job started elsewhere, from its config.json and pids.json.

        Used by `adt watch` after the monitor that started the job died or quit. A pid counts
        only while it is alive and still runs `engine.node` for this run dir: pids get reused.
        """
        run_dir = Path(run_dir).resolve()
        config = RunConfig.from_dict(RunDir(run_dir).read_config())
        config.runs_dir, config.run_id = str(run_dir.parent), run_dir.name
        sup = cls(config)
        sup.attached = True
        for name, pid in RunDir(run_dir).read_pids().items():
            role = "worker" if name.startswith("worker") else name
            worker = int(name[len("worker"):]) if role == "worker" else None
            child = Child(name, role, worker, None, RunDir(run_dir).log(name), pid)
            child.exited = not is_job_process(pid, run_dir)
            sup.children.append(child)
        return sup

    # --- starting -------------------------------------------------------------------------
    def start(self) -> Path:
        """Write the run dir and config, then start every process; returns the run dir."""
        cfg = self.config
        RunDir(self.run_dir).create(cfg)
        if cfg.mps and self.mps is None:
            self.mps = start_mps(self.run_dir, self.python)
        port = cfg.port or free_port(cfg.host)
        world = cfg.workers + 1
        self.children = []
        if cfg.workers == 0:
            self._spawn("single", "single", None, {"RANK": "0", "WORLD_SIZE": "1"}, port)
        else:
            self._spawn("ps", "ps", None, {"RANK": "0", "WORLD_SIZE": str(world)}, port)
            for w in range(cfg.workers):
                self._spawn(f"worker{w}", "worker", w, {"RANK": str(w + 1), "WORLD_SIZE": str(world)}, port)
        RunDir(self.run_dir).write_pids({c.name: c.pid for c in self.children})
        return self.run_dir

    def _spawn(self, name: str, role: str, worker: int | None, env_extra: dict[str, str], port: int) -> None:
        env = dict(os.environ)
        env.update(env_extra)
        env.update(self.mps.env if self.mps else {})
        env.update({
            "MASTER_ADDR": self.config.host,
            "MASTER_PORT": str(port),
            "PYTHONUNBUFFERED": "1",
            # PyTorch would otherwise use every core in every process; N processes share them.
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")])),
        })
        if is_loopback(self.config.host):
            env.setdefault("TP_SOCKET_IFNAME", "lo")
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        log_path = RunDir(self.run_dir).log(name)
        cmd = [self.python, "-m", "engine.node", "--role", role, "--run-dir", str(self.run_dir),
               "--supervisor", str(os.getpid())]
        with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            popen = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=os.getcwd(),
                                     start_new_session=True)
        self.children.append(Child(name, role, worker, popen, log_path, popen.pid))

    # --- watching -------------------------------------------------------------------------
    def poll(self) -> list[Child]:
        """Children that exited since the last poll (their exit_code now set)."""
        exited = []
        for child in self.children:
            if not child.running:
                continue
            if child.popen is not None:
                if child.popen.poll() is not None:
                    child.exit_code, child.exited = child.popen.returncode, True
                    exited.append(child)
            elif not is_job_process(child.pid, self.run_dir):  # attached: not our child, no code
                child.exited = True
                exited.append(child)
        return exited

    def running(self) -> bool:
        self.poll()
        return any(c.running for c in self.children)

    def main_child(self) -> Child | None:
        """The process whose exit ends the job: the PS, or the single process."""
        return next((c for c in self.children if c.role in ("ps", "single")), None)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every child to exit; True if they all did."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running():
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    # --- stopping -------------------------------------------------------------------------
    def release(self) -> None:
        """The job is over (every child has exited): quit its MPS daemon, if it has one."""
        if self.mps is not None:
            self.mps.quit()
            self.mps = None

    def stop(self, grace: float | None = None, announce: Callable[[], None] | None = None) -> None:
        """Graceful stop (SIGTERM: the PS writes a final checkpoint), then SIGKILL after `grace`.
        `announce` runs once every process has its signal: a front end says "stopping" only then,
        so that whoever sees it knows the stop no longer depends on us."""
        self.stopping = True
        grace = self.config.grace_period if grace is None else grace
        tree = self._tree()
        for child in self.children:
            if child.running:
                signal_group(child.pid, signal.SIGTERM)
        if announce is not None:
            announce()
        if not self.wait(grace):
            self.kill()
        kill_all(tree)

    def kill(self) -> None:
        """SIGKILL every child's process group and every process of their trees."""
        tree = self._tree()
        for child in self.children:
            if child.running:
                signal_group(child.pid, signal.SIGKILL)
        kill_all(tree)
        self.wait(5)

    def record_exits(self, run_ended: bool) -> None:
        """Append `process_exit` for every child and, if the run never said how it ended, a
        `run_end`. Call only once every child has exited: the PS is the writer while it lives."""
        from engine.events import EventWriter

        writer = EventWriter(RunDir(self.run_dir).events, self.run_id)
        for child in self.children:
            writer.emit("process_exit", role=child.role, worker=child.worker, pid=child.pid,
                        code=child.exit_code, reason="exited")  # the code says how
        main = self.main_child()
        if not run_ended and main is not None:
            outcome = "stopped" if self.stopping and main.exit_code in (0, -15) else "failed"
            writer.emit("run_end", outcome=outcome, version=None, epoch=None, best_val_acc=None,
                        message=f"{main.label} {describe_exit(main.exit_code)} before the run ended; "
                                f"see {main.log_path}")
        writer.close()

    def _tree(self) -> list[psutil.Process]:
        procs: list[psutil.Process] = []
        for child in self.children:
            try:
                proc = psutil.Process(child.pid)
                procs.append(proc)
                procs.extend(proc.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        return procs
