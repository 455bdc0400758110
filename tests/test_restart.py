"""A lost worker comes back: with --max-restarts, a killed worker's job checkpoints where it is and
starts again from there (every process, same run dir), and the worker trains again."""

from __future__ import annotations

import os
import signal
import time

from engine.checkpoint import load_checkpoint

from .jobs import FAST, HeadlessJob, latency, no_partial_files


def test_a_killed_worker_is_brought_back_and_trains_again(tiny_data, tmp_path, record_property):
    job = HeadlessJob(tmp_path, "--data", str(tiny_data), "--epochs", "50", "--max-restarts", "1", *FAST)
    job.wait_event("worker_metrics", 120, lambda e: e["worker"] == 1)
    first_pid = job.pids()["worker1"]
    os.kill(first_pid, signal.SIGKILL)
    killed = time.time()
    restart = job.wait_event("worker_restart", 120)
    assert restart["worker"] == 1 and restart["restart"] == 1 and restart["max_restarts"] == 1
    assert "was killed" in restart["reason"]
    # The PS checkpointed the version it reached as it stopped; the new start resumes from it.
    stopped = [e for e in job.events("run_end") if e["t"] < restart["t"]][-1]
    assert stopped["outcome"] == "stopped"
    resumed = job.wait_event("run_start", 120, lambda e: e["t"] > restart["t"])
    assert resumed["resumed"] and resumed["version"] == stopped["version"]
    back = job.wait_event("worker_metrics", 120, lambda e: e["worker"] == 1 and e["t"] > restart["t"])
    latency(record_property, "worker SIGKILL -> the worker pushes again", back["t"] - killed)
    assert job.pids()["worker1"] != first_pid
    # No push applied twice: versions only go up from the checkpoint, one per push.
    versions = [e["version"] for e in job.events("ps_metrics") if e["t"] > resumed["t"]]
    assert versions and versions[0] >= stopped["version"] and versions == sorted(versions)

    # Its one restart used, the next loss is not repaired: the run goes on without it.
    os.kill(job.pids()["worker1"], signal.SIGKILL)
    job.wait_event("alert", 60, lambda e: e["code"] == "worker_lost" and e["t"] > resumed["t"])
    job.proc.send_signal(signal.SIGINT)
    assert job.wait(60) == 130, job.context()
    assert len(job.events("worker_restart")) == 1
    assert "restarting the job from a checkpoint taken now" in job.output
    assert load_checkpoint(job.checkpoint_dir / "last.pt")["version"] >= stopped["version"]
    assert no_partial_files(job.checkpoint_dir) == []
