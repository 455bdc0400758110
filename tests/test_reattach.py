"""If the monitor is killed, even with SIGKILL, the job runs on and `adt watch` re-attaches to it.

That is the documented choice (docs/monitor.md): children run in their own sessions, so they
outlive whoever started them, and pids.json lets a new supervisor find, watch and stop them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import psutil

from adt_tui.supervisor import Supervisor, kill_all
from engine.events import read_events

from .conftest import child_env, tiny_config

MONITOR = """
import json, sys, time
from adt_tui.supervisor import Supervisor
from engine.config import RunConfig
supervisor = Supervisor(RunConfig(**json.loads(sys.argv[1])).validate())
supervisor.start()
time.sleep(600)
"""


def job_processes(run_dir) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "engine.node" in cmdline and str(run_dir) in cmdline:
            found.append(proc)
    return found


def metrics_count(run_dir) -> int:
    path = run_dir / "events.jsonl"
    return sum(e["kind"] == "worker_metrics" for e in read_events(path)) if path.exists() else 0


def wait_until(condition, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)


def test_sigkilled_monitor_leaves_a_running_job_that_watch_reattaches_and_stops(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path, epochs=200, run_id="survivor", log_interval=0.5)
    run_dir = tmp_path / "runs" / "survivor"
    monitor = subprocess.Popen([sys.executable, "-c", MONITOR, json.dumps(config.to_dict())],
                               env=child_env())
    try:
        wait_until(lambda: metrics_count(run_dir) >= 2)
        monitor.send_signal(signal.SIGKILL)
        monitor.wait(10)
        before = metrics_count(run_dir)
        wait_until(lambda: metrics_count(run_dir) > before + 2)  # still training, unobserved

        watcher = Supervisor.attach(run_dir)  # what `adt watch runs/survivor` does
        assert watcher.attached and sorted(c.name for c in watcher.children if c.running) == [
            "ps", "worker0", "worker1"]
        watcher.stop(grace=20)
        assert not watcher.running()
        events = list(read_events(run_dir / "events.jsonl"))
        assert [e["outcome"] for e in events if e["kind"] == "run_end"] == ["stopped"]
        assert (tmp_path / "checkpoints" / "survivor" / "last.pt").is_file()
        wait_until(lambda: not job_processes(run_dir), timeout=10)
    finally:
        monitor.kill()
        kill_all(job_processes(run_dir))
