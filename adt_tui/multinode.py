"""`adt launch`: this machine's share of a multi-node job, started by PyTorch's launcher, torchrun.

Global rank 0 (node 0, local rank 0) is the parameter server: node 0 writes the run directory and
its PS owns the event stream and the checkpoints. Other nodes need only the code and the same
shard paths; their workers fetch the config and shard list from the PS over RPC, and check their
copy of the data against the PS's manifest (engine/datacheck.py).

RPC meets at torchrun's own store: torchrun tells its processes to use the agent's store at
MASTER_ADDR:MASTER_PORT (TORCHELASTIC_USE_AGENT_STORE), and `engine.transport.init` asks for
exactly that address, so no second port is opened for the rendezvous. That store is torchrun's:
node 0's agent serves it on every interface (`::`), which adt cannot narrow; what adt controls,
TensorPipe and Gloo, listens on `--ifname` (lo for a loopback master). `engine.listen` says so at
the start of every node.

torchrun runs in its own session, so a terminal's Ctrl+C reaches only us. The node's job is a
`JobController` (adt_tui/controller.py), as `adt run`'s is, whose processes are a `TorchrunNode`:
stopping follows the supervisor's discipline: SIGTERM to torchrun (which forwards it to its
processes, and they stop gracefully), the grace period, then SIGKILL for every process of the tree.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import psutil

from engine.config import ConfigError, RunConfig
from engine.events import EventTail, EventWriter, ExitCode
from engine.listen import is_loopback, launch_listeners
from engine.rundir import RunDir

from .controller import JobController
from .processes import kill_all
from .supervisor import PROJECT_ROOT, Child, new_run_id

LAUNCHER = "torchrun"  # its name in pids.json and its log: runs/<id>/logs/torchrun.log


@dataclass
class NodePlan:
    """Where this node sits in the job."""

    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_host: str
    master_port: int
    ifname: str = ""  # network interface for TensorPipe and Gloo; "" = lo on loopback, else auto

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def validate(self) -> NodePlan:
        if self.nnodes < 1:
            raise ConfigError("nnodes", f"is {self.nnodes}", "pass --nnodes 1 or more")
        if not 0 <= self.node_rank < self.nnodes:
            raise ConfigError("node_rank", f"is {self.node_rank}, outside 0..{self.nnodes - 1}",
                              "number the nodes 0..N-1; node 0 runs the parameter server")
        if self.nproc_per_node < 1:
            raise ConfigError("nproc_per_node", f"is {self.nproc_per_node}", "pass 1 or more")
        if self.world_size < 2:
            raise ConfigError("nproc_per_node", "leaves no process for a worker (rank 0 is the PS)",
                              "pass --nproc-per-node 2, or train in one process with "
                              "`adt run --workers 0`")
        return self


def parse_master(text: str) -> tuple[str, int]:
    """`HOST:PORT` -> (host, port), with an error that says how to write it."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("master", f"is {text!r}", "write it as HOST:PORT, e.g. 10.0.0.1:29500")
    return host.strip("[]"), int(port)


def torchrun_args(plan: NodePlan, run_dir: Path | None) -> list[str]:
    """torchrun's arguments for this node (everything after `torchrun`)."""
    args = ["--nnodes", str(plan.nnodes), "--node-rank", str(plan.node_rank),
            "--nproc-per-node", str(plan.nproc_per_node),
            "--master-addr", plan.master_host, "--master-port", str(plan.master_port),
            # A restart would start a second PS on the same run dir; a lost worker is the PS's
            # business (it goes on without it), not torchrun's.
            "--max-restarts", "0",
            "-m", "engine.node"]
    return args + (["--run-dir", str(run_dir)] if run_dir is not None else [])


def node_env(plan: NodePlan) -> dict[str, str]:
    """The variables adt sets for torchrun beyond the caller's environment."""
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    ifname = plan.ifname or ("lo" if is_loopback(plan.master_host) else "")
    if ifname:  # else TensorPipe and Gloo pick the address the host name resolves to
        env["TP_SOCKET_IFNAME"] = env["GLOO_SOCKET_IFNAME"] = ifname
    return env


def shown_command(plan: NodePlan, run_dir: Path | None) -> str:
    """The plain torchrun line equivalent to this `adt launch` (run from the project root)."""
    env = " ".join(f"{k}={v}" for k, v in node_env(plan).items())
    return f"{env} torchrun {shlex.join(torchrun_args(plan, run_dir))}"


def other_node_command(plan: NodePlan) -> str:
    """What to run on every other node."""
    ifname = " --ifname IFACE" if not is_loopback(plan.master_host) else ""
    return (f"adt launch --nnodes {plan.nnodes} --node-rank K --nproc-per-node "
            f"{plan.nproc_per_node} --master {plan.master_host}:{plan.master_port}{ifname}")


def prepare_run(config: RunConfig, plan: NodePlan, workers_flag: int | None, out: TextIO) -> Path:
    """Node 0: fix the worker count, check the data, write runs/<id>/config.json; the run dir."""
    from .launch import prepare_job

    workers = plan.world_size - 1
    if workers_flag is not None and workers_flag != workers:
        raise ConfigError("workers", f"is {workers_flag}, but --nnodes {plan.nnodes} x "
                          f"--nproc-per-node {plan.nproc_per_node} makes {workers} workers "
                          "(global rank 0 is the PS)", "drop --workers or change --nproc-per-node")
    config.workers = workers
    # Data and resume checks, and node 0's placement (its local rank 0 is the PS); launch() says
    # what listens. Other nodes place their workers from the config they get from the PS.
    prepare_job(config, out, listeners=[], local_workers=plan.nproc_per_node - 1)
    config.run_id = config.run_id or new_run_id()
    run_dir = Path(config.runs_dir).resolve() / config.run_id
    RunDir(run_dir).create(config)
    return run_dir


def launch(plan: NodePlan, run_dir: Path | None, grace_period: float, out: TextIO | None = None,
           dry_run: bool = False) -> int:
    """Run torchrun for this node until it ends; node 0 (with `run_dir`) prints the run's progress."""
    out = out or sys.stdout
    print(f"node {plan.node_rank} of {plan.nnodes}; the same as:\n  {shown_command(plan, run_dir)}",
          file=out, flush=True)
    if plan.node_rank == 0 and plan.nnodes > 1:
        print(f"on each other node K (1..{plan.nnodes - 1}), from the project root:\n"
              f"  {other_node_command(plan)}", file=out, flush=True)
    listeners = launch_listeners(plan.master_host, plan.master_port,
                                 node_env(plan).get("TP_SOCKET_IFNAME", ""), plan.node_rank)
    print("\n".join(listeners), file=out, flush=True)
    if dry_run:
        return ExitCode.OK
    tail = None
    if run_dir is not None:
        tail = EventTail(RunDir(run_dir).events)
        tail.poll()  # a resumed run's earlier segments are history, not this launch's progress
    node = TorchrunNode(plan, run_dir, grace_period)  # one start: torchrun restarts nothing either
    job = JobController(processes=lambda _config, _python: node)  # type: ignore[arg-type,return-value]
    return _supervise(job, node, tail, grace_period, out)


def _supervise(job: JobController, node: TorchrunNode, tail: EventTail | None, grace: float,
               out: TextIO) -> int:
    from .headless import Printer

    printer = Printer(out)
    interrupted = False

    def on_term(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    over_since: float | None = None
    try:
        job.start()
        if node.run_dir is not None:
            printer.line(f"run dir: {node.run_dir}   (torchrun and process logs in {node.log_path})")
        while job.running():
            job.poll()
            for event in tail.poll() if tail else []:
                printer.event(event)
            if printer.outcome is not None and not node.alive():
                # The PS wrote run_end and this node's processes are gone, but torchrun waits (up
                # to 5 minutes) at its exit barrier for every other node: a node whose workers
                # failed never arrives there. The run is over; do not make the user wait.
                over_since = over_since or time.monotonic()
                if time.monotonic() - over_since > grace:
                    printer.line("the run is over; torchrun still waits for another node: stopping it")
                    job.stop(grace)
                    break
            time.sleep(0.3)
    except KeyboardInterrupt:
        interrupted = True
        job.stop_after_ctrl_c(printer.line, "this node", grace, ps_here=tail is not None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    job.kill()  # torchrun's processes lead their own sessions: none may outlive it
    for event in tail.poll() if tail else []:
        printer.event(event)
    job.finish(run_ended=printer.outcome is not None)  # node 0: the PS's run_end, or ours now
    for event in tail.poll() if tail else []:
        printer.event(event)
    code = job.main_child().exit_code  # type: ignore[union-attr]
    if interrupted:
        return ExitCode.INTERRUPTED
    cause = failed_first(node.log_path) if code != 0 and printer.outcome != "finished" else None
    if cause is not None:
        # A process of this node failed and torchrun stopped the others, the PS too, which calls
        # that "stopped": a failure, whatever the PS wrote.
        printer.line(f"node 0 failed: torchrun exited with code {code}: {cause}; see {node.log_path}")
        return ExitCode.FAILED
    if printer.outcome == "stopped":  # here, or from the monitor (`adt watch`): torchrun got SIGTERM
        return ExitCode.INTERRUPTED
    if node.run_dir is None:  # other nodes: torchrun's own report went to this terminal
        return ExitCode.OK if code == 0 else ExitCode.FAILED
    return ExitCode.OK if printer.outcome == "finished" else ExitCode.FAILED


class TorchrunNode:
    """The process layer of one node's start (what the Supervisor is for `adt run`): torchrun
    and every process it starts, remembered while they live so none can be orphaned. Stopping
    follows the supervisor's discipline: SIGTERM to torchrun (which forwards it to its
    processes), the grace period, then SIGKILL for every process of the tree."""

    attached = False
    mps = None  # torchrun starts the processes: MPS is the machine's own (refused with --mps)

    def __init__(self, plan: NodePlan, run_dir: Path | None, grace: float) -> None:
        self.plan, self.run_dir, self.grace = plan, run_dir, grace
        self.run_id = run_dir.name if run_dir is not None else ""
        # Node 0 logs to its run dir; other nodes have none and print to this terminal.
        self.log_path = RunDir(run_dir).log(LAUNCHER) if run_dir is not None else None
        self.children: list[Child] = []
        self.stopping = False
        self._seen: dict[int, psutil.Process] = {}

    def start(self) -> Path | None:
        env = {**os.environ, **node_env(self.plan), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(self.plan, self.run_dir)]
        with open(self.log_path, "ab") if self.log_path else contextlib.nullcontext() as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT if log else None,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self.children = [Child(LAUNCHER, "launcher", None, proc, self.log_path or Path(os.devnull), proc.pid)]
        if self.run_dir is not None:
            # `adt watch` and `adt runs` find the job through the launcher: its command line names
            # engine.node and the run dir, and a SIGTERM to it stops the whole node gracefully.
            RunDir(self.run_dir).write_pids({LAUNCHER: proc.pid})
        return self.run_dir

    def main_child(self) -> Child | None:
        return self.children[0] if self.children else None

    def poll(self) -> list[Child]:
        """torchrun, once it exited; meanwhile remember every process it started."""
        main = self.main_child()
        if main is None or main.exited:
            return []
        self._remember()
        if main.popen.poll() is None:  # type: ignore[union-attr]
            return []
        main.exit_code, main.exited = main.popen.returncode, True  # type: ignore[union-attr]
        return [main]

    def alive(self) -> bool:
        """True while any process torchrun started still runs."""
        for proc in self._seen.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    return True
        return False

    def stop(self, grace: float | None = None, announce: Callable[[], None] | None = None) -> None:
        self.stopping = True
        main = self.main_child()
        if main is None:
            return
        self._remember()
        main.popen.send_signal(signal.SIGTERM)  # type: ignore[union-attr]  # torchrun forwards it
        if announce is not None:
            announce()
        with contextlib.suppress(subprocess.TimeoutExpired):
            main.popen.wait(self.grace if grace is None else grace)  # type: ignore[union-attr]
        self.kill()

    def kill(self) -> None:
        """SIGKILL torchrun and every process it started that still runs."""
        main = self.main_child()
        if main is not None and main.popen.poll() is None:  # type: ignore[union-attr]
            main.popen.kill()  # type: ignore[union-attr]
        if main is not None:
            main.popen.wait()  # type: ignore[union-attr]
            self.poll()
        procs = list(self._seen.values())
        kill_all(procs)  # psutil checks each pid was not reused since we saw it

    def record_exits(self, run_ended: bool) -> None:
        """If the PS never wrote `run_end`, say how the run ended (it is gone: we may write now):
        stopped, when we asked torchrun to stop and it did (e.g. while the job was still forming)."""
        main = self.main_child()
        if run_ended or self.run_dir is None or main is None:
            return
        stopped = self.stopping and main.exit_code in (0, -signal.SIGTERM)
        message = ("stopped on request before the PS wrote its end" if stopped
                   else f"torchrun exited with code {main.exit_code} before the run ended")
        writer = EventWriter(RunDir(self.run_dir).events, self.run_id)
        writer.emit("run_end", outcome="stopped" if stopped else "failed", version=None, epoch=None,
                    best_val_acc=None, message=f"{message}; see {self.log_path}")
        writer.close()

    def release(self) -> None:
        pass

    def _remember(self) -> None:
        main = self.main_child()
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(main.pid).children(recursive=True):  # type: ignore[union-attr]
                self._seen.setdefault(child.pid, child)


def failed_first(log_path: Path | None) -> str | None:
    """From torchrun's "Root Cause" summary (written when one of its processes fails, not when it
    is stopped by a signal): which rank failed first, and how; None without one."""
    try:
        text = log_path.read_text(errors="replace") if log_path else ""
    except OSError:
        return None
    if "Root Cause" not in text:
        return None
    cause = text.rpartition("Root Cause")[2]
    rank = re.search(r"rank\s*:\s*(\d+) \(local_rank: (\d+)\)", cause)
    code = re.search(r"exitcode\s*:\s*(-?\d+)", cause)
    if not (rank and code):
        return "a process failed"
    global_rank = int(rank[1])
    who = "the PS (rank 0)" if global_rank == 0 else f"worker {global_rank - 1} (rank {global_rank})"
    return f"{who} failed first with exit code {code[1]}"
