"""Run history: `adt runs` reads states from events and processes; `adt clean` asks and never
removes a running run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adt_tui.history import clean, list_runs, parse_age, runs_table
from adt_tui.supervisor import Supervisor
from engine.config import ConfigError, RunConfig

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400.0


def write_run(runs: Path, run_id: str, events: list[tuple[float, str, dict]], workers: int = 2,
              checkpoints: Path | None = None) -> Path:
    """A run directory as a job leaves it: config.json, events.jsonl (t, kind, fields), checkpoints."""
    run_dir = runs / run_id
    run_dir.mkdir(parents=True)
    config = RunConfig(workers=workers, run_id=run_id, runs_dir=str(runs))
    (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
    ckpt = (checkpoints or runs.parent / "checkpoints") / run_id
    lines = []
    for t, kind, fields in events:
        if kind == "run_start":
            fields = {"code": {"fingerprint": "c0de"}, "checkpoint_dir": str(ckpt.resolve()), **fields}
        lines.append(json.dumps({"v": 1, "t": t, "kind": kind, "run_id": run_id, **fields}))
    if lines:
        (run_dir / "events.jsonl").write_text("\n".join(lines) + "\n")
        ckpt.mkdir(parents=True)
        (ckpt / "last.pt").write_bytes(b"x" * 100)
    return run_dir


def val(t: float, acc: float) -> tuple[float, str, dict]:
    return (t, "validation", {"acc": acc, "loss": 1.0, "samples_seen": 100, "version": 1})


def end(t: float, outcome: str) -> tuple[float, str, dict]:
    return (t, "run_end", {"outcome": outcome})


@pytest.fixture
def history(tmp_path: Path) -> Path:
    """Five runs of every ended state, started one day apart (the newest an hour ago)."""
    runs = tmp_path / "runs"
    now = time.time()
    t = {name: now - 3600 - i * DAY for i, name in enumerate(
        ["fresh", "resumed", "failed", "crashed", "old"])}
    write_run(runs, "fresh", [(t["fresh"], "run_start", {}), val(t["fresh"] + 50, 0.5),
                              end(t["fresh"] + 60, "finished")])
    write_run(runs, "resumed", [(t["resumed"], "run_start", {}), val(t["resumed"] + 10, 0.4),
                                end(t["resumed"] + 30, "stopped"), (t["resumed"] + 500, "run_start", {}),
                                val(t["resumed"] + 510, 0.7), end(t["resumed"] + 530, "finished")])
    write_run(runs, "failed", [(t["failed"], "run_start", {}), end(t["failed"] + 5, "failed")])
    write_run(runs, "crashed", [(t["crashed"], "run_start", {}), val(t["crashed"] + 20, 0.3)])
    write_run(runs, "old", [(t["old"], "run_start", {}), end(t["old"] + 90, "diverged")], workers=0)
    write_run(runs, "never-started", [])
    return runs


def test_runs_are_listed_newest_first_with_state_best_accuracy_and_duration(history):
    runs = list_runs(history, history.parent / "checkpoints")
    # A run that never started sorts by when its config was written: just now.
    assert [r.run_id for r in runs] == ["never-started", "fresh", "resumed", "failed", "crashed", "old"]
    by_id = {r.run_id: r for r in runs}
    assert {k: r.state for k, r in by_id.items()} == {
        "fresh": "finished", "resumed": "finished", "failed": "failed", "crashed": "crashed",
        "old": "diverged", "never-started": "new"}
    assert by_id["resumed"].best_val_acc == 0.7
    assert by_id["resumed"].duration == pytest.approx(30 + 30)  # two segments, not the gap between
    assert by_id["failed"].best_val_acc is None
    assert by_id["old"].workers == 0 and by_id["fresh"].code == "c0de"
    table = runs_table(runs)
    assert table.splitlines()[0].split() == ["ID", "STARTED", "STATE", "MODEL", "WORKERS", "DATA",
                                             "BEST", "VAL", "CODE", "DURATION"]
    assert "70.00%" in table and "1m00s" in table


def test_runs_json_lists_the_same_runs(history):
    result = subprocess.run([sys.executable, "-m", "adt_tui.cli", "runs", "--json", "--runs-dir", str(history)],
                            capture_output=True, text=True, timeout=60, check=False, cwd=history.parent,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["run_id"] for r in rows][:3] == ["never-started", "fresh", "resumed"]
    assert {"run_id", "started", "state", "model", "workers", "data", "best_val_acc", "code",
            "duration"} <= set(rows[0])


def test_clean_asks_first_and_removes_nothing_on_no(history, capsys):
    code = clean(history, history.parent / "checkpoints", [], "failed", None, yes=False, ask=lambda _: "n")
    assert code == 1
    assert (history / "failed").is_dir() and "nothing removed" in capsys.readouterr().out


def test_clean_by_state_removes_runs_and_their_checkpoints(history):
    checkpoints = history.parent / "checkpoints"
    code = clean(history, checkpoints, [], "failed", None, yes=False, ask=lambda _: "y")
    assert code == 0
    assert not (history / "failed").exists() and not (checkpoints / "failed").exists()
    assert (history / "crashed").is_dir() and (checkpoints / "crashed" / "last.pt").is_file()


def test_clean_older_than_picks_runs_by_start_time(history):
    clean(history, history.parent / "checkpoints", [], None, "2d", yes=True)
    assert sorted(p.name for p in history.iterdir()) == ["fresh", "never-started", "resumed"]


def test_clean_by_id_and_state_must_both_match(history):
    clean(history, history.parent / "checkpoints", ["fresh", "crashed"], "crashed", None, yes=True)
    assert not (history / "crashed").exists() and (history / "fresh").is_dir()


def test_clean_without_a_selector_or_with_an_unknown_id_is_refused(history):
    with pytest.raises(ConfigError, match="no run id"):
        clean(history, history.parent / "checkpoints", [], None, None, yes=True)
    with pytest.raises(ConfigError, match="nope"):
        clean(history, history.parent / "checkpoints", ["nope"], None, None, yes=True)
    with pytest.raises(ConfigError, match="older_than"):
        parse_age("a week")


def test_clean_command_reads_the_answer_from_stdin(history):
    command = [sys.executable, "-m", "adt_tui.cli", "clean", "crashed", "--runs-dir", str(history),
               "--checkpoints-dir", str(history.parent / "checkpoints")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    declined = subprocess.run(command, input="\n", capture_output=True, text=True, timeout=60,
                              check=False, env=env)
    assert declined.returncode == 1 and "[y/N]" in declined.stdout
    assert (history / "crashed").is_dir()
    accepted = subprocess.run(command, input="y\n", capture_output=True, text=True, timeout=60,
                              check=False, env=env)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert not (history / "crashed").exists()


def test_a_running_job_is_listed_as_running_and_never_cleaned(tiny_data, tmp_path):
    config = RunConfig(data=str(tiny_data), workers=1, epochs=500, batch_size=32, loader_workers=0,
                       runs_dir=str(tmp_path / "runs"), checkpoints_dir=str(tmp_path / "checkpoints"),
                       run_id="live", grace_period=10, log_interval=0.5).validate()
    supervisor = Supervisor(config)
    supervisor.start()
    try:
        events = tmp_path / "runs" / "live" / "events.jsonl"
        deadline = time.monotonic() + 120
        while not (events.exists() and '"run_start"' in events.read_text()):
            assert time.monotonic() < deadline and supervisor.running(), "the job did not start"
            time.sleep(0.2)
        (run,) = list_runs(tmp_path / "runs", tmp_path / "checkpoints")
        assert run.state == "running"
        assert clean(tmp_path / "runs", tmp_path / "checkpoints", ["live"], None, None, yes=True) == 0
        assert (tmp_path / "runs" / "live" / "config.json").is_file()
    finally:
        supervisor.stop(grace=10)
    (run,) = list_runs(tmp_path / "runs", tmp_path / "checkpoints")
    assert run.state == "stopped"
