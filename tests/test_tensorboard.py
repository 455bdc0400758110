"""TensorBoard: a real run writes its scalars live with --tensorboard, `adt export` writes the
same from the finished run's events, and tensorboard's own reader reads back every series."""

from __future__ import annotations

import subprocess

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from tests.conftest import adt_command, child_env
from tests.jobs import FAST, HeadlessJob

SERIES = ("train/loss/worker0", "train/acc/worker0", "train/loss/worker1", "train/acc/worker1",
          "images_per_s/worker0", "images_per_s/worker1", "val/loss", "val/acc", "lr",
          "staleness/p50", "staleness/p95", "staleness/max", "updates_per_s")


def read_back(folder) -> tuple[dict[str, list[tuple[int, float]]], dict[str, str]]:
    """Every scalar series as (step, value) points, and every text, by tag."""
    reader = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    reader.Reload()
    scalars, texts = {}, {}
    for tag in reader.Tags()["tensors"]:
        points = reader.Tensors(tag)
        plugin = reader.SummaryMetadata(tag).plugin_data.plugin_name
        if plugin == "scalars":
            scalars[tag] = [(p.step, float(tensor_util.make_ndarray(p.tensor_proto))) for p in points]
        elif plugin == "text":
            texts[tag] = tensor_util.make_ndarray(points[-1].tensor_proto).item().decode()
        else:
            texts[tag] = plugin  # hparams
    return scalars, texts


def test_live_and_exported_scalars_read_back_with_every_series_and_its_last_value(tiny_data, tmp_path):
    live, exported = tmp_path / "tb-live", tmp_path / "tb-export"
    job = HeadlessJob(tmp_path, "--data", str(tiny_data), "--workers", "2", "--epochs", "2",
                      "--tensorboard", str(live), *FAST)
    assert job.wait(300) == 0, job.context()
    assert f"TensorBoard: tensorboard --logdir {live}" in job.output
    done = subprocess.run(adt_command("export", str(job.run_dir), "--tensorboard", str(exported)),
                          capture_output=True, text=True, env=child_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    events = job.events()
    last_val = job.events("validation")[-1]
    last_ps = job.events("ps_metrics")[-1]
    last_w1 = [e for e in job.events("worker_metrics") if e["worker"] == 1 and e.get("timing")][-1]
    for folder in (live / "job", exported / "job"):
        scalars, texts = read_back(folder)
        assert set(SERIES) <= set(scalars), sorted(scalars)
        assert abs(scalars["val/acc"][-1][1] - last_val["acc"]) < 1e-6
        assert scalars["val/acc"][-1][0] == last_val["samples_seen"]  # steps are samples seen
        assert len(scalars["val/acc"]) == len(job.events("validation"))
        assert abs(scalars["lr"][-1][1] - last_ps["lr"]) < 1e-6 * last_ps["lr"] + 1e-12
        assert scalars["staleness/max"][-1][1] == last_ps["staleness"]["max"]
        assert abs(scalars["train/loss/worker1"][-1][1] - last_w1["loss"]) < 1e-5
        steps = [step for step, _ in scalars["train/loss/worker0"]]
        assert steps == sorted(steps) and steps[-1] > 0
        assert texts.get("_hparams_/session_start_info") == "hparams"
        assert '"lr": 0.05' in texts["config"] and "fingerprint" in texts["code"]
        start = next(e for e in events if e["kind"] == "run_start")
        assert start["code"]["fingerprint"] in texts["run"] and "job" in texts["run"]
