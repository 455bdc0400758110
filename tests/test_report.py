"""`adt report`: runs overlaid in one PNG and an HTML page, with a text summary."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from adt_tui.headless import run_headless
from adt_tui.report import load_series, write_report
from engine.config import RunConfig

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def recorded_run(runs: Path, run_id: str, workers: int, accs: list[float], loss: object = 1.0) -> None:
    """A finished run's files: per epoch, metrics from every worker, then a validation."""
    run_dir = runs / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(RunConfig(workers=workers, epochs=len(accs)).to_dict()))
    t0 = 1_700_000_000.0
    events = [{"kind": "run_start", "t": t0, "config": {"epochs": len(accs)}, "code": {"fingerprint": "c"}}]
    for epoch, acc in enumerate(accs):
        for worker in range(max(1, workers)):
            events.append({"kind": "worker_metrics", "t": t0 + 10 * epoch + 5, "worker": worker,
                           "loss": loss, "acc": acc - 0.05, "staleness": worker,
                           "samples": 100 * (epoch + 1), "timing": {"data": 1.0}})
        if workers:  # the PS's count of every push's staleness in the interval
            events.append({"kind": "ps_metrics", "t": t0 + 10 * epoch + 6, "samples_seen": 100 * (epoch + 1),
                           "version": 10 * (epoch + 1), "epoch": epoch, "lr": 0.1,
                           "staleness": {"p50": 0, "p95": 1, "max": 1, "hist": {"0": 5, "1": 5}}})
        events.append({"kind": "validation", "t": t0 + 10 * epoch + 9, "samples_seen": 100 * (epoch + 1),
                       "loss": 1.0 - acc, "acc": acc, "chance": 0.25})
        events.append({"kind": "epoch_end", "t": t0 + 10 * epoch + 9, "epoch": epoch,
                       "samples_seen": 100 * (epoch + 1)})
    events.append({"kind": "run_end", "t": t0 + 10 * len(accs), "outcome": "finished"})
    (run_dir / "events.jsonl").write_text("".join(
        json.dumps({"v": 1, "run_id": run_id, **e}) + "\n" for e in events))


def test_report_overlays_runs_in_a_png_and_an_html_page_with_a_summary(tmp_path):
    runs = tmp_path / "runs"
    recorded_run(runs, "base", 0, [0.5, 0.7, 0.8])
    recorded_run(runs, "async", 2, [0.6, 0.85])
    png, html, summary = write_report(["base", "async"], runs, tmp_path / "out" / "cmp.png")
    assert png.read_bytes().startswith(PNG_MAGIC)
    page = html.read_text()
    assert html == tmp_path / "out" / "cmp.html"
    assert "data:image/png;base64," in page and "base vs async" in page and "best val acc" in page
    lines = summary.splitlines()
    assert lines[0].startswith("base ") and "single process" in lines[0] and "best val acc 80.0%" in lines[0]
    assert lines[1].startswith("async") and "async, 2 workers" in lines[1] and "staleness" in lines[1]
    assert lines[2] == "async vs base: best val acc +5.0 points, 0.67x the wall time"


def test_report_series_keep_each_worker_and_skip_nan_losses(tmp_path):
    recorded_run(tmp_path, "nan", 3, [0.3, 0.4], loss="nan")
    series = load_series(tmp_path / "nan")
    assert sorted(series.train) == []  # every training loss was NaN: nothing to plot, no crash
    assert series.val["acc"] == [0.3, 0.4] and series.val["samples"] == [100, 200]
    recorded_run(tmp_path, "ok", 3, [0.3, 0.4])
    assert sorted(load_series(tmp_path / "ok").train) == [0, 1, 2]


def test_report_of_an_unknown_run_names_it_and_exits_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "adt_tui.cli", "report", "ghost", "--runs-dir",
                             str(tmp_path)], capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    assert "'ghost'" in result.stderr and "adt runs" in result.stderr


def test_report_compares_a_real_async_run_with_the_baseline(tiny_data, tmp_path):
    ids = []
    for workers in (0, 2):
        config = RunConfig(data=str(tiny_data), workers=workers, epochs=2, batch_size=32, lr=0.02,
                           loader_workers=0, runs_dir=str(tmp_path / "runs"), run_id=f"w{workers}",
                           checkpoints_dir=str(tmp_path / "checkpoints"), log_interval=0.3).validate()
        assert run_headless(config, io.StringIO()) == 0
        ids.append(config.run_id)
    result = subprocess.run([sys.executable, "-m", "adt_tui.cli", "report", *ids, "--runs-dir",
                             str(tmp_path / "runs"), "--out", str(tmp_path / "report.png")],
                            capture_output=True, text=True, timeout=120, check=False,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "report.png").read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / "report.html").is_file()
    assert "w2 vs w0: best val acc" in result.stdout and "finished, 2 epochs" in result.stdout
    series = load_series(tmp_path / "runs" / "w2")
    assert sorted(series.train) == [0, 1] and len(series.val["acc"]) == 2
