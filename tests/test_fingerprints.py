"""Fingerprints: a worker running other code is flagged; `--resume` refuses other data or another
model (before anything starts), and allows but records changed code.

Changed code always lives in a copy of the sources (`copy_tree`): tests never edit the checkout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from adt_tui.supervisor import free_port
from engine.checkpoint import load_checkpoint
from engine.synth import write_synthetic

from .conftest import adt_command, child_env, tiny_config
from .jobs import FAST, HeadlessJob, change_source, copy_tree, events_of, spawn_node, wait_for


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> tuple[Path, Path]:
    """Two copies of the sources: `same` as the checkout, `changed` with one edited file."""
    same = copy_tree(tmp_path_factory.mktemp("same"))
    changed = copy_tree(tmp_path_factory.mktemp("changed"))
    change_source(changed, "engine/worker.py", "a change the job did not start with")
    return same, changed


@pytest.fixture(scope="module")
def other_data(tmp_path_factory) -> Path:
    """Data with the same classes and image size as tiny_data but other samples."""
    return write_synthetic(tmp_path_factory.mktemp("other") / "data", num_classes=4, image_size=16,
                           train_samples=200, val_samples=100, train_shards=2, val_shards=1,
                           seed=7, progress=False)


def test_worker_running_other_code_raises_fingerprint_mismatch(trees, tiny_data, tmp_path, record_property):
    """PS and worker 0 import one tree, worker 1 another (as on a machine with another checkout)."""
    same, changed = trees
    config = tiny_config(tiny_data, tmp_path, run_id="fp", workers=2, epochs=2,
                         batch_size=16, loader_workers=0)
    run_dir = Path(config.runs_dir) / "fp"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
    port = free_port("127.0.0.1")
    nodes = [spawn_node(tree, rank, 3, port, run_dir) for rank, tree in enumerate((same, same, changed))]
    events = run_dir / "events.jsonl"
    try:
        wait_for("all three processes to exit", lambda: all(n.poll() is not None for n in nodes), 180,
                 lambda: "\n".join(p.read_text() for p in sorted((run_dir / "logs").iterdir())))
    finally:
        for node in nodes:
            node.kill()
            node.wait()
    assert [n.returncode for n in nodes] == [0, 0, 0]
    joins = {e["worker"]: e for e in events_of(events, "worker_join")}
    start = events_of(events, "run_start")[0]
    assert joins[0]["code_fingerprint"] == start["code"]["fingerprint"] != joins[1]["code_fingerprint"]
    alerts = [e for e in events_of(events, "alert") if e["code"] == "fingerprint_mismatch"]
    assert [a["worker"] for a in alerts] == [1], alerts
    assert joins[1]["code_fingerprint"] in alerts[0]["message"]
    seconds = alerts[0]["t"] - joins[1]["t"]
    print(f"[time-to-alert] worker with other code -> fingerprint_mismatch: {seconds:.2f}s (at join)")
    record_property("time_to_alert[fingerprint_mismatch]", seconds)


@pytest.fixture(scope="module")
def finished_run(trees, tiny_data, tmp_path_factory) -> Path:
    """A short single-process run, made with the `same` tree, to resume from."""
    tmp = tmp_path_factory.mktemp("base")
    job = HeadlessJob(tmp, "--data", str(tiny_data), "--workers", "0", "--epochs", "1",
                      "--max-updates", "5", *FAST, run_id="base", tree=trees[0])
    assert job.wait(120) == 0, job.context()
    return tmp


@pytest.fixture
def resumable(finished_run, tmp_path) -> Path:
    """A private copy of the finished run's directories, so each test resumes the same state."""
    for name in ("runs", "checkpoints"):
        shutil.copytree(finished_run / name, tmp_path / name)
    return tmp_path


def resume(tmp: Path, *flags: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(adt_command("run", "--no-ui", "--resume", "base", "--runs-dir", str(tmp / "runs"),
                                      "--checkpoints-dir", str(tmp / "checkpoints"), *flags),
                          env=child_env(), capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize("flags, problem", [
    (["--data", "OTHER"], "data fingerprint"),
    (["--model", "resnet18"], "other parameter shapes"),
    (["--model", "resnet18", "--force"], "other parameter shapes"),
], ids=["other-data", "other-model", "other-model-forced"])
def test_resume_refuses_other_data_or_model_before_anything_starts(flags, problem, resumable, other_data):
    events = resumable / "runs" / "base" / "events.jsonl"
    before = events.read_bytes()
    result = resume(resumable, *[str(other_data) if f == "OTHER" else f for f in flags])
    assert result.returncode == 2, result.stdout + result.stderr
    assert "refusing to resume" in result.stderr and problem in result.stderr and "Fix:" in result.stderr
    if problem == "data fingerprint":
        assert "--force" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert events.read_bytes() == before  # the run's history is untouched: nothing started
    load_checkpoint(resumable / "checkpoints" / "base" / "last.pt")


def test_forced_resume_on_other_data_runs(resumable, other_data):
    result = resume(resumable, "--data", str(other_data), "--force", "--max-updates", "10")
    assert result.returncode == 0, result.stdout + result.stderr
    starts = events_of(resumable / "runs" / "base" / "events.jsonl", "run_start")
    assert [s["resumed"] for s in starts] == [False, True]
    assert starts[1]["data"]["fingerprint"] != starts[0]["data"]["fingerprint"]


def test_resume_with_changed_code_is_allowed_but_warned_and_recorded(resumable, trees):
    _, changed = trees
    # The resumed job imports the changed tree (the checkout on PYTHONPATH would be the old code).
    result = subprocess.run(
        adt_command("run", "--no-ui", "--resume", "base", "--runs-dir", str(resumable / "runs"),
                    "--checkpoints-dir", str(resumable / "checkpoints"), "--max-updates", "10"),
        env={**child_env(), "PYTHONPATH": str(changed)}, cwd=changed, capture_output=True, text=True,
        timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    events = resumable / "runs" / "base" / "events.jsonl"
    old, new = (s["code"]["fingerprint"] for s in events_of(events, "run_start"))
    assert old != new
    (alert,) = [e for e in events_of(events, "alert") if e["code"] == "stale_code"]
    assert alert["level"] == "warning" and old in alert["message"] and new in alert["message"]
    assert "WARNING: resuming with changed code" in result.stdout
    assert load_checkpoint(resumable / "checkpoints" / "base" / "last.pt")["meta"]["code"]["fingerprint"] == new


def test_fingerprint_covers_the_model_file_config_file_and_watched_paths(tiny_data, tmp_path):
    """Every process hashes the same files, so a worker agrees with the PS; run_start lists them."""
    model = tmp_path / "net.py"
    model.write_text("from torch import nn\n\n\ndef build(num_classes):\n"
                     "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, num_classes))\n")
    toml = tmp_path / "adt.toml"
    toml.write_text("epochs = 1\nmax_updates = 5\n")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "augment_more.py").write_text("STRENGTH = 1\n")
    job = HeadlessJob(tmp_path, "--config", str(toml), "--watch", str(hooks), "--data", str(tiny_data),
                      "--model", f"{model}:build", "--workers", "1", *FAST)
    assert job.wait(180) == 0, job.context()
    (start,) = job.events("run_start")
    covers = start["code"]["covers"]
    assert [Path(p).name for p in covers] == ["engine", "adt_tui", "net.py", "adt.toml", "hooks"]
    assert start["config"]["config_file"] == str(toml.resolve()) and start["config"]["watch"] == [str(hooks)]
    (joined,) = job.events("worker_join")
    assert joined["code_fingerprint"] == start["code"]["fingerprint"]
    assert not [a for a in job.events("alert") if a["code"] == "fingerprint_mismatch"]
    saved = json.loads((job.run_dir / "config.json").read_text())
    assert saved["config_file"] == str(toml.resolve())
    assert load_checkpoint(job.checkpoint_dir / "last.pt")["meta"]["code"]["covers"] == covers
