"""Reliability at the edges: no process waits forever, a stop finishes even when whoever asked for
it dies, and Ctrl+C at any moment, imports included, exits quietly.

Real processes throughout; every wait is on a condition (a log line, an event, a process gone)
with a generous deadline, and the times measured are reported through `latency`. A process whose
parent was killed here is no longer our child, so conftest's `no_orphans` cannot see it: these
tests look for what is left of a run by their tmp_path (conftest's `leftover_guard`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adt_tui.supervisor import Supervisor, free_port

from .conftest import ROOT, child_env, tiny_config
from .jobs import (
    FAST,
    HeadlessJob,
    events_of,
    hold_worker0_in_the_barrier,
    latency,
    spawn_node,
    wait_for,
)

JOIN = 5.0  # --join-timeout of the cases that run into it


def node_run_dir(data: Path, tmp: Path, **overrides) -> Path:
    """A run directory with config.json, for `engine.node` processes started by hand."""
    config = tiny_config(data, tmp, run_id="edge", batch_size=16, **overrides)
    run_dir = Path(config.runs_dir) / "edge"
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
    return run_dir


def log_of(run_dir: Path, name: str) -> str:
    path = run_dir / "logs" / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def logs(run_dir: Path) -> str:
    return "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')}"
                   for p in sorted((run_dir / "logs").glob("*.log")))


def loading_torch(pid: int) -> bool:
    """True once `import torch` has begun in `pid` (its libraries are mapped)."""
    try:
        return "torch/lib/" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def exit_code(proc: subprocess.Popen, what: str, timeout: float, context=str) -> int:
    wait_for(what, lambda: proc.poll() is not None, timeout, context)
    return proc.returncode


# --- no process waits forever ----------------------------------------------------------------
def test_ps_whose_workers_never_come_fails_after_the_join_timeout(tiny_data, tmp_path, record_property):
    run_dir = node_run_dir(tiny_data, tmp_path, join_timeout=JOIN)
    ps = spawn_node(ROOT, 0, 3, free_port("127.0.0.1"), run_dir)
    try:
        wait_for("the PS to wait for its workers", lambda: "store listens" in log_of(run_dir, "ps"), 120,
                 lambda: logs(run_dir))
        waiting = time.monotonic()
        code = exit_code(ps, "the PS to give up", 120, lambda: logs(run_dir))
        latency(record_property, f"no workers -> PS exits (--join-timeout {JOIN:g})", time.monotonic() - waiting)
    finally:
        ps.kill()
        ps.wait()
    assert code == 1, logs(run_dir)
    end = events_of(run_dir / "events.jsonl", "run_end")[-1]
    assert end["outcome"] == "failed"
    assert "worker0 and worker1 never joined within 5s (--join-timeout)" in end["message"]
    assert "Traceback" not in log_of(run_dir, "ps")


def test_worker_whose_ps_never_comes_exits_after_the_join_timeout(tiny_data, tmp_path):
    run_dir = node_run_dir(tiny_data, tmp_path, join_timeout=JOIN)
    worker = spawn_node(ROOT, 1, 2, free_port("127.0.0.1"), run_dir)
    try:
        code = exit_code(worker, "the worker to give up", 120, lambda: logs(run_dir))
    finally:
        worker.kill()
        worker.wait()
    text = log_of(run_dir, "worker0")
    assert code == 1, text
    assert "rendezvous at 127.0.0.1" in text and "did not answer within 5s (--join-timeout)" in text
    assert "Traceback" not in text


def test_workers_killed_before_joining_leave_no_ps_waiting(tiny_data, tmp_path, record_property, leftover_guard):
    """The issue's case: the runner and both workers SIGKILLed as the job starts (a dying terminal,
    the OOM killer); the PS, alone and nobody's child, must end by itself, and soon: with the
    default --join-timeout (300 s) it notices that its supervisor is gone instead."""
    job = HeadlessJob(tmp_path, "--data", str(tiny_data), *FAST)
    pids = job.pids()
    for pid in (job.proc.pid, pids["worker0"], pids["worker1"]):
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    job.wait(30)
    wait_for("the PS to exit on its own", lambda: not leftover_guard(), 120, job.context)
    latency(record_property, "runner and workers killed before joining -> PS gone (default --join-timeout)",
            time.monotonic() - killed)
    end = job.events("run_end")[-1]
    assert end["outcome"] == "failed", job.context()
    assert "died while the job was still forming; nothing was trained" in end["message"]
    assert "run_end: failed" in log_of(job.run_dir, "ps")


HANGING_WORKER = """
import sys, time
from engine import transport

transport.init(1, 2, "127.0.0.1", int(sys.argv[1]), 600)
print("joined", flush=True)
time.sleep(600)  # as a worker stuck while it builds its model: in the group, never registered
"""


def test_worker_that_joins_but_never_registers_is_counted_out(tiny_data, tmp_path, record_property):
    run_dir = node_run_dir(tiny_data, tmp_path, workers=1, join_timeout=JOIN)
    port = free_port("127.0.0.1")
    ps = spawn_node(ROOT, 0, 2, port, run_dir)
    env = child_env()
    env.update(RANK="1", WORLD_SIZE="2", TP_SOCKET_IFNAME="lo", GLOO_SOCKET_IFNAME="lo")
    hanging = subprocess.Popen([sys.executable, "-c", HANGING_WORKER, str(port)], env=env, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        code = exit_code(ps, "the PS to give up on the worker", 180, lambda: logs(run_dir))
    finally:
        for proc in (ps, hanging):
            proc.kill()
            proc.wait()
    assert code == 1, logs(run_dir)
    lost = [e for e in events_of(run_dir / "events.jsonl", "alert") if e["code"] == "worker_lost"]
    assert [e["worker"] for e in lost] == [0] and "never registered within 5s" in lost[0]["message"]
    end = events_of(run_dir / "events.jsonl", "run_end")[-1]
    assert end["outcome"] == "failed" and "worker0 never registered within 5s" in end["message"]
    latency(record_property, "worker joined but never registered -> counted out",
            lost[0]["t"] - events_of(run_dir / "events.jsonl", "run_start")[0]["t"])


@pytest.mark.parametrize("sig, rank, moment", [
    (signal.SIGINT, 0, "loading torch"),
    (signal.SIGTERM, 0, "in the rendezvous"),
    (signal.SIGTERM, 1, "in the rendezvous"),
], ids=["ps-sigint-importing", "ps-sigterm-rendezvous", "worker-sigterm-rendezvous"])
def test_stop_signal_ends_a_starting_process_at_once(sig, rank, moment, tiny_data, tmp_path, record_property):
    """While a process starts there is nothing to save: it leaves at once, quietly, code 0, even
    from inside torch's rendezvous (where a plain signal handler would run only once torch returns)."""
    run_dir = node_run_dir(tiny_data, tmp_path)  # the default --join-timeout: minutes
    name = "ps" if rank == 0 else "worker0"
    node = spawn_node(ROOT, rank, 3, free_port("127.0.0.1"), run_dir)
    try:
        if moment == "loading torch":
            wait_for("torch to load", lambda: loading_torch(node.pid), 120, lambda: logs(run_dir))
        else:
            mark = "store listens" if rank == 0 else "joining the parameter server"
            wait_for("the rendezvous", lambda: mark in log_of(run_dir, name), 120, lambda: logs(run_dir))
        node.send_signal(sig)
        sent = time.monotonic()
        code = exit_code(node, "the process to exit", 60, lambda: logs(run_dir))
        latency(record_property, f"{signal.Signals(sig).name} {name} {moment} -> exit",
                time.monotonic() - sent)
    finally:
        node.kill()
        node.wait()
    text = log_of(run_dir, name)
    assert code == 0, text
    assert "stopped on request while starting" in text and "Traceback" not in text
    if rank == 0:
        assert events_of(run_dir / "events.jsonl", "run_end")[-1]["outcome"] == "stopped"


def test_epoch_barrier_gives_up_on_a_ps_that_stops_answering(tiny_data, tmp_path, record_property):
    """Worker 0 waits at the epoch's end for worker 1 (stopped) when the PS stops answering too,
    as across a network partition: nothing breaks the connection, so only the worker's pings
    (answered within --worker-timeout) can tell it the PS is gone."""
    config = tiny_config(tiny_data, tmp_path, epochs=50, batch_size=16, worker_timeout=30.0)
    supervisor = Supervisor(config)
    run_dir = supervisor.start()
    events = run_dir / "events.jsonl"
    ps, w0, w1 = (next(c for c in supervisor.children if c.name == n) for n in ("ps", "worker0", "worker1"))
    try:
        hold_worker0_in_the_barrier(supervisor, lambda: logs(run_dir))
        os.kill(ps.pid, signal.SIGSTOP)
        partitioned = time.monotonic()
        assert not [e for e in events_of(events, "alert") if e["code"] == "worker_silent"], \
            "the PS counted worker 1 out before it was stopped: the barrier was released"
        wait_for("worker 0 to give up on the PS", lambda: w0.popen.poll() is not None, 180, lambda: logs(run_dir))
        latency(record_property, "PS stops answering -> worker in the barrier exits (--worker-timeout 30)",
                time.monotonic() - partitioned)
    finally:
        for child in (ps, w1):
            os.kill(child.pid, signal.SIGCONT)
        supervisor.kill()
    assert w0.popen.returncode == 1
    text = w0.log_path.read_text()
    assert "lost the parameter server" in text and "Exiting." in text and "Traceback" not in text


# --- a stop finishes without whoever asked for it -------------------------------------------
@pytest.mark.parametrize("phase", ["starting", "training"])
def test_stop_finishes_when_the_runner_dies_mid_stop(phase, tiny_data, tmp_path, record_property, leftover_guard):
    """Ctrl+C to `adt run --no-ui`, then the runner is SIGKILLed before its grace period ends (the
    monitor's terminal closed mid-stop is the same): every process still ends by itself, well
    before the --join-timeout (300 s) that would otherwise end a PS still waiting for workers."""
    grace = 10.0
    job = HeadlessJob(tmp_path, "--data", str(tiny_data), "--epochs", "50", "--grace-period", str(grace), *FAST)
    if phase == "starting":  # the PS waits in its rendezvous; the workers still start
        wait_for("the PS's rendezvous", lambda: "store listens" in log_of(job.run_dir, "ps"), 120,
                 job.context)
    else:
        job.wait_event("worker_metrics", 120, lambda e: e["worker"] == 1)
        job.wait_event("worker_metrics", 120, lambda e: e["worker"] == 0)
    job.proc.send_signal(signal.SIGINT)
    asked = time.monotonic()
    wait_for("the runner to start stopping", lambda: any(line.startswith("stopping") for line in job.lines),
             60, job.context)
    job.proc.kill()
    job.wait(30)
    wait_for("every process of the run to end", lambda: not leftover_guard(), grace + 60, job.context)
    latency(record_property, f"stop requested ({phase}), runner killed -> every process gone",
            time.monotonic() - asked)
    end = job.events("run_end")[-1]
    assert end["outcome"] == "stopped", job.context()
    assert "Traceback" not in logs(job.run_dir)
    if phase == "training":
        assert (job.checkpoint_dir / "last.pt").exists()


def test_a_stopped_worker_stuck_on_a_silent_ps_exits_after_the_grace_period(tiny_data, tmp_path,
                                                                            record_property):
    """Its graceful stop cannot finish (its push waits for a PS that no longer answers): its own
    watchdog ends it `--grace-period` seconds after the signal, with nobody left to kill it."""
    config = tiny_config(tiny_data, tmp_path, epochs=50, batch_size=16, grace_period=5.0)
    supervisor = Supervisor(config)
    run_dir = supervisor.start()
    ps, w0 = (next(c for c in supervisor.children if c.name == n) for n in ("ps", "worker0"))
    try:
        wait_for("worker 0 to train", lambda: any(e["worker"] == 0 for e in
                                                  events_of(run_dir / "events.jsonl", "worker_metrics")),
                 120, lambda: logs(run_dir))
        os.kill(ps.pid, signal.SIGSTOP)
        os.kill(w0.pid, signal.SIGTERM)
        asked = time.monotonic()
        wait_for("worker 0 to exit", lambda: w0.popen.poll() is not None, 120, lambda: logs(run_dir))
        latency(record_property, "stop of a worker stuck on a silent PS -> exit (--grace-period 5)",
                time.monotonic() - asked)
    finally:
        os.kill(ps.pid, signal.SIGCONT)
        supervisor.kill()
    assert w0.popen.returncode == 1
    assert "still running 5s after the stop request (--grace-period); exiting now" in w0.log_path.read_text()


# --- quiet exits ---------------------------------------------------------------------------------
GATE = """
import sys, time

class Gate:
    '''Holds the first import of one module, as a slow disk would, until a signal comes.'''

    def find_spec(self, name, path=None, target=None):
        if name == module:
            open(marker, "w").close()
            while True:
                time.sleep(0.05)

module, marker = sys.argv[1], sys.argv[2]
sys.argv = ["adt", *sys.argv[3:]]
sys.meta_path.insert(0, Gate())
from adt_tui.entry import main  # what the `adt` console script runs
sys.exit(main())
"""


@pytest.mark.parametrize("command, module", [
    (["run", "--no-ui"], "torch"),
    (["watch", "runs/none"], "textual"),
    (["report", "none"], "matplotlib"),
    (["data", "prepare", "nowhere"], "PIL"),
    (["run", "--no-ui"], "adt_tui.cli"),
], ids=["run", "watch", "report", "data-prepare", "adt-itself"])
def test_ctrl_c_while_a_command_imports_exits_130_with_one_line(command, module, tiny_data, tmp_path):
    """SIGINT while the command's heavy import is under way: `adt` runs these commands with the
    real entry point, only that import is held until the signal arrives."""
    marker = tmp_path / "importing"
    extra = ["--data", str(tiny_data), "--runs-dir", str(tmp_path / "runs")] if command[0] == "run" else []
    proc = subprocess.Popen([sys.executable, "-c", GATE, module, str(marker), *command, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=child_env(), cwd=tmp_path)
    try:
        wait_for(f"`import {module}`", marker.exists, 120)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, output
    assert output.splitlines() == ["adt: interrupted"], output


def test_ctrl_c_while_torch_loads_in_a_run_exits_quietly(tiny_data, tmp_path, leftover_guard):
    job = HeadlessJob(tmp_path, "--data", str(tiny_data), *FAST)
    wait_for("torch to load", lambda: loading_torch(job.proc.pid), 120, job.context)
    job.proc.send_signal(signal.SIGINT)
    assert job.wait(60) == 130, job.context()
    assert "Traceback" not in job.output and "KeyboardInterrupt" not in job.output, job.output
    assert job.lines[-1] in ("adt: interrupted", "run stopped while starting: nothing to save") \
        or job.lines[-1].startswith("run stopped: "), job.output
    if job.run_dir.exists():
        wait_for("every process of the run to end", lambda: not leftover_guard(), 60, job.context)


def test_ctrl_c_once_the_run_dir_appears_stops_everything_quietly(tiny_data, tmp_path, leftover_guard):
    """The run's processes are being started, or are importing torch: they are stopped at once."""
    job = HeadlessJob(tmp_path, "--data", str(tiny_data), *FAST)
    wait_for("the run dir", job.run_dir.exists, 120, job.context)
    job.proc.send_signal(signal.SIGINT)
    assert job.wait(60) == 130, job.context()
    wait_for("every process of the run to end", lambda: not leftover_guard(), 60, job.context)
    assert "Traceback" not in job.output + logs(job.run_dir), job.context()
    assert sum(line.startswith("stopping") for line in job.lines) == 1, job.output
    assert job.lines[-1].startswith("run stopped"), job.output
    assert job.events("run_end")[-1]["outcome"] == "stopped"


POOL = """
import signal, sys
from pathlib import Path
from engine.prepare import _pool

before = signal.getsignal(signal.SIGINT)
pool = _pool(2)
for proc in pool._pool:  # read at once: the disposition comes through exec, before Python starts
    status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
    print(next(line for line in status if line.startswith("SigIgn:")).split()[1])
pool.terminate()
pool.join()
print(signal.getsignal(signal.SIGINT) is before)
"""


def test_conversion_processes_ignore_ctrl_c_from_birth():
    """A terminal's Ctrl+C reaches `adt data prepare`'s whole process group; its pool processes
    ignore it (only the parent answers, by ending the pool), so none prints a traceback."""
    result = subprocess.run([sys.executable, "-c", POOL], capture_output=True, text=True,
                            env=child_env(), cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    *masks, restored = result.stdout.split()
    assert len(masks) == 2 and restored == "True", result.stdout
    assert all(int(mask, 16) & (1 << (signal.SIGINT - 1)) for mask in masks), masks
