"""The fault matrix: break a real job in each way the issue lists and check what a person sees.

After every case no process is left behind (conftest's `no_orphans`) and no half-written file is
taken for a checkpoint. Data faults (missing, empty or corrupt shards, out-of-range labels,
mismatched class maps) are caught before anything starts; their cases live in
tests/test_preflight.py (test_shard_missing_from_*, test_empty_shard_is_named,
test_random_bytes_shard_*, test_truncated_shard_*, test_label_outside_the_class_map_is_named,
test_train_and_val_class_maps_must_match, test_model_num_classes_must_match_the_manifest). Each
case here reports its "time from bad condition to alert/exit" through `latency` (printed; a JUnit
property).
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from adt_tui.cli import main as adt_main
from adt_tui.launch import prepare_job
from adt_tui.supervisor import Supervisor
from engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from engine.config import RunConfig
from engine.models import build_model
from engine.rules import make_rule
from engine.server import FlatModel

from .conftest import adt_command, child_env, tiny_config
from .jobs import (
    FAST,
    HeadlessJob,
    hold_worker0_in_the_barrier,
    latency,
    no_partial_files,
    wait_for,
)


# --- processes dying -----------------------------------------------------------------------------
def test_sigkill_of_a_worker_is_recorded_and_the_others_go_on(tiny_data, tmp_path, record_property):
    job = HeadlessJob(tmp_path, "--data", str(tiny_data), "--epochs", "50", *FAST)
    job.wait_event("worker_metrics", 120, lambda e: e["worker"] == 1)
    os.kill(job.pids()["worker1"], signal.SIGKILL)
    killed = time.time()
    alert = job.wait_event("alert", 30, lambda e: e["code"] == "worker_lost")
    latency(record_property, "worker SIGKILL -> worker_lost alert", alert["t"] - killed)
    assert alert["worker"] == 1 and alert["level"] == "error"
    # The PS goes on applying worker 0's pushes (torch RPC cannot re-admit the dead rank).
    version = job.events("ps_metrics")[-1]["version"]
    job.wait_event("ps_metrics", 60, lambda e: e["t"] > alert["t"] and e["version"] >= version + 20)
    job.proc.send_signal(signal.SIGINT)
    assert job.wait(30) == 130, job.context()
    lost = [e for e in job.events("process_exit") if e["worker"] == 1]
    assert {"lost", "exited"} <= {e["reason"] for e in lost}, lost
    assert any(e["code"] == -signal.SIGKILL for e in lost)
    assert job.events("run_end")[-1]["outcome"] == "stopped"
    assert "ERROR: worker 1" in job.output and "exited with code -9" in job.output
    assert load_checkpoint(job.checkpoint_dir / "last.pt")["version"] >= version + 20
    assert no_partial_files(job.checkpoint_dir) == []


def test_sigkill_of_the_ps_makes_workers_exit_with_a_clear_error(tiny_data, tmp_path, record_property):
    """Worker 0 waits in the epoch barrier's RPC (no timeout) and worker 1 is stopped mid-step
    when the PS dies: both must notice by themselves and exit 1, not hang."""
    config = tiny_config(tiny_data, tmp_path, epochs=50, batch_size=16, worker_timeout=300.0)
    supervisor = Supervisor(config)
    supervisor.start()
    ps, w0, w1 = (next(c for c in supervisor.children if c.name == n) for n in ("ps", "worker0", "worker1"))
    try:
        hold_worker0_in_the_barrier(supervisor)
        os.kill(ps.pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for("worker 0 to exit", lambda: w0.popen.poll() is not None, 60)
        latency(record_property, "PS SIGKILL -> worker blocked in RPC exits", time.monotonic() - killed)
        os.kill(w1.pid, signal.SIGCONT)
        continued = time.monotonic()
        wait_for("worker 1 to exit", lambda: w1.popen.poll() is not None, 60)
        latency(record_property, "PS SIGKILL -> stopped worker exits once continued",
                time.monotonic() - continued)
    finally:
        if w1.popen.poll() is None:
            os.kill(w1.pid, signal.SIGCONT)
        supervisor.kill()
    assert (w0.popen.returncode, w1.popen.returncode) == (1, 1)
    for log in (w0.log_path, w1.log_path):
        text = log.read_text()
        assert "lost the parameter server" in text and "Exiting." in text, text
        assert "Traceback" not in text, text


# --- checkpoints ---------------------------------------------------------------------------------
WRITER = """
import sys, torch
from engine.checkpoint import save_checkpoint
big = torch.zeros(8_000_000)
version = 0
while True:
    version += 1
    big.fill_(version)
    save_checkpoint(sys.argv[1], {"model": {"w": big}, "version": version})
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_interrupted_checkpoint_write_leaves_the_previous_checkpoint_loadable(sig, tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=child_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for("a first checkpoint", path.exists, 60)
        # Signal the writer while its temp file exists, i.e. in the middle of a write.
        wait_for("a write in progress", lambda: no_partial_files(path.parent), 30)
        writer.send_signal(sig)
        output, _ = writer.communicate(timeout=30)
    finally:
        writer.kill()
        writer.wait()
    payload = load_checkpoint(path)
    assert payload["version"] >= 1
    assert torch.all(payload["model"]["w"] == payload["version"]), "a mix of two writes"
    leftovers = no_partial_files(path.parent)
    if sig == signal.SIGINT:
        assert "KeyboardInterrupt" in output and leftovers == []
    else:  # a SIGKILLed writer cannot clean up: its temp file never has the real name ...
        assert all(n.startswith(".last.pt.") and n.endswith(".tmp") for n in leftovers)
        save_checkpoint(path, {"model": {}})  # ... and the next write removes it
        assert no_partial_files(path.parent) == []


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    model = build_model("cnn", 4)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "good.pt",
                           {"model": model.state_dict(), "version": 3, "meta": {}})


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "foreign"])
def test_damaged_checkpoint_is_a_clear_error(damage, good_checkpoint, tmp_path):
    path = tmp_path / "last.pt"
    data = good_checkpoint.read_bytes()
    if damage == "foreign":
        torch.save({"weights": torch.ones(2)}, path)
    else:
        path.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(4096),
                          "empty": b""}[damage])
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value) and "Fix:" in str(error.value)


def test_resume_from_a_truncated_checkpoint_exits_2_before_starting(good_checkpoint, tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path, run_id="old")
    run_dir = Path(config.runs_dir) / "old"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
    last = Path(config.checkpoints_dir) / "old" / "last.pt"
    last.parent.mkdir(parents=True)
    data = good_checkpoint.read_bytes()
    last.write_bytes(data[: len(data) // 3])
    start = time.monotonic()
    result = subprocess.run(adt_command("run", "--no-ui", "--resume", "old", "--runs-dir", config.runs_dir,
                                        "--checkpoints-dir", config.checkpoints_dir),
                            env=child_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "corrupt or truncated" in result.stderr and str(last.resolve()) in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json"]  # nothing started
    print(f"[time-to-alert] corrupt checkpoint -> exit 2: {time.monotonic() - start:.2f}s")


class Payload:
    """Pickles to a call of os.mkdir: loading it without weights_only would create `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_checkpoint_holding_a_pickled_object_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "last.pt"
    torch.save({"format": 1, "model": {}, "extra": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="objects other than tensors"):
        load_checkpoint(path)
    assert not marker.exists()


# --- disk full -----------------------------------------------------------------------------------
LIMITED_WRITER = """
import resource, sys, torch
from engine.checkpoint import CheckpointError, save_checkpoint
save_checkpoint(sys.argv[1], {"model": {"w": torch.ones(1000)}, "version": 1})
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # files of this process stop at 200 kB
try:
    save_checkpoint(sys.argv[1], {"model": {"w": torch.ones(1_000_000)}, "version": 2})
except CheckpointError as exc:
    print(exc)
    sys.exit(3)
"""


def test_failing_checkpoint_write_is_a_checkpoint_error_and_keeps_the_previous(tmp_path):
    """A writer that hits its file-size limit (EFBIG, as a full disk gives ENOSPC): torch's own
    RuntimeError must come out as a CheckpointError, and nothing partial may stay."""
    path = tmp_path / "last.pt"
    result = subprocess.run([sys.executable, "-c", LIMITED_WRITER, str(path)], env=child_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "could not write checkpoint" in result.stdout and "File too large" in result.stdout
    assert load_checkpoint(path)["version"] == 1
    assert no_partial_files(tmp_path) == []


def checkpoint_size(tmp: Path) -> int:
    """Bytes of a checkpoint of the tiny job's model with its default rule's state (a momentum per
    worker, for some rules), as the PS writes it."""
    config = RunConfig(workers=2).validate()
    flat = FlatModel(build_model("cnn", 4))
    rule = make_rule(config, flat.params, flat.grads, flat.model, single=False)
    for worker in range(config.workers):
        rule.sent(worker, 0)
        rule.apply(worker, 0, 0, 0.1)
    return save_checkpoint(tmp / "probe.pt", {"model": flat.model.state_dict(),
                                              "rule": rule.state_dict()}).stat().st_size


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs with room for one checkpoint but not two (needs root: mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    size = (int(checkpoint_size(tmp_path) * 1.5) // 4096 + 1) * 4096
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}); "
                    "test_failing_checkpoint_write_* covers the writer")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_while_checkpointing_alerts_and_keeps_the_previous_checkpoint(
        small_disk, tiny_data, tmp_path, record_property):
    job = HeadlessJob(tmp_path, "--data", str(tiny_data), "--epochs", "2", *FAST,
                      "--checkpoints-dir", str(small_disk))
    assert job.wait(180) == 0, job.context()
    failed = job.events("alert")
    assert failed and {a["code"] for a in failed} == {"checkpoint_failed"}, failed
    assert "No space left on device" in failed[0]["message"]
    epoch_end = job.events("epoch_end")[0]
    latency(record_property, "disk full -> checkpoint_failed alert", failed[0]["t"] - epoch_end["t"])
    written = job.events("checkpoint")
    assert [(c["tag"], c["epoch"]) for c in written] == [("last", 1)], written
    assert load_checkpoint(small_disk / "job" / "last.pt")["epoch"] == 1
    assert sorted(p.name for p in (small_disk / "job").iterdir()) == ["last.pt"]  # nothing partial
    assert job.events("run_end")[-1]["outcome"] == "finished"
    assert "ERROR: could not write checkpoint" in job.output


# --- ports and addresses ------------------------------------------------------------------------
def test_port_in_use_is_refused_before_anything_starts(tiny_data, tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.monotonic()
        code = adt_main(["run", "--no-ui", "--data", str(tiny_data), "--port", str(port),
                         "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2
    assert "'port'" in err and str(port) in err and "Fix:" in err
    assert not (tmp_path / "runs").exists()
    print(f"[time-to-alert] port in use -> exit 2: {time.monotonic() - start:.2f}s")


def test_rpc_listens_on_loopback_by_default_and_warns_otherwise(tiny_data, tmp_path):
    assert RunConfig().host == "127.0.0.1"
    quiet, loud = io.StringIO(), io.StringIO()
    prepare_job(tiny_config(tiny_data, tmp_path), quiet)
    prepare_job(tiny_config(tiny_data, tmp_path, host="0.0.0.0"), loud)
    assert "unauthenticated" not in quiet.getvalue()
    assert "WARNING" in loud.getvalue() and "unauthenticated" in loud.getvalue()
