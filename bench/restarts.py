"""Kill a worker again and again: how fast it is back, and whether anything leaks.

    python -m bench.restarts --cycles 20

Runs a real `adt run --no-ui --workers 2 --max-restarts CYCLES` job on the built-in data and,
each cycle, SIGKILLs worker 1 once it trains, then waits until the new worker 1 pushes metrics.
Prints, per cycle: kill -> `worker_restart` event, kill -> the worker trains again, and the open
file descriptors and threads of the runner (the supervisor, which lives through every cycle) and
of the PS (a new process each cycle). Writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from engine.events import read_events


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def usage(pid: int) -> tuple[int, int]:
    proc = psutil.Process(pid)
    return proc.num_fds(), proc.num_threads()


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.restarts", description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=20)
    p.add_argument("--out", default="bench-out/restarts.json")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="adt-restarts-"))
    run_dir = work / "runs" / "job"
    cmd = [sys.executable, "-m", "adt_tui.cli", "run", "--no-ui", "--workers", "2", "--epochs", "1000",
           "--max-restarts", str(args.cycles), "--loader-workers", "0", "--log-interval", "0.3",
           "--runs-dir", str(work / "runs"), "--checkpoints-dir", str(work / "checkpoints"), "--run-id", "job"]
    runner = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def events(kind: str) -> list[dict[str, Any]]:
        path = run_dir / "events.jsonl"
        return [e for e in read_events(path) if e["kind"] == kind] if path.exists() else []

    def trains_since(t: float) -> dict[str, Any] | None:
        return next((e for e in events("worker_metrics") if e["worker"] == 1 and e["t"] > t), None)

    rows = []
    try:
        wait_for(lambda: trains_since(0), 300, "the first worker_metrics")
        print(f"{'cycle':>5} {'-> restart event':>17} {'-> training':>12} {'runner fds':>10} "
              f"{'threads':>7} {'PS fds':>6} {'threads':>7}", flush=True)
        for cycle in range(1, args.cycles + 1):
            pids = json.loads((run_dir / "pids.json").read_text())["children"]
            killed = time.time()
            os.kill(pids["worker1"], signal.SIGKILL)
            restart = wait_for(lambda n=cycle: len(events("worker_restart")) >= n and events("worker_restart")[-1],
                               120, f"restart {cycle}")
            back = wait_for(lambda t=restart["t"]: trains_since(t), 120, f"worker 1 back in cycle {cycle}")
            ps = json.loads((run_dir / "pids.json").read_text())["children"]["ps"]
            row = {"cycle": cycle, "to_restart_s": round(restart["t"] - killed, 2),
                   "to_training_s": round(back["t"] - killed, 2)}
            row["runner_fds"], row["runner_threads"] = usage(runner.pid)
            row["ps_fds"], row["ps_threads"] = usage(ps)
            rows.append(row)
            print(f"{cycle:>5} {row['to_restart_s']:>16.2f}s {row['to_training_s']:>11.2f}s "
                  f"{row['runner_fds']:>10} {row['runner_threads']:>7} {row['ps_fds']:>6} "
                  f"{row['ps_threads']:>7}", flush=True)
    finally:
        runner.send_signal(signal.SIGINT)
        runner.wait(120)
    times = sorted(r["to_training_s"] for r in rows)
    print(f"kill -> training again: median {times[len(times) // 2]:.2f}s, max {times[-1]:.2f}s; "
          f"runner fds {rows[0]['runner_fds']} -> {rows[-1]['runner_fds']}, "
          f"threads {rows[0]['runner_threads']} -> {rows[-1]['runner_threads']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
