"""The engine end to end: real child processes, real RPC, real WebDataset shards."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch

from adt_tui.headless import run_headless
from engine.checkpoint import load_checkpoint
from engine.events import KINDS, read_events
from engine.models import build_model
from engine.schedule import LRSchedule

from .conftest import adt_command, child_env, tiny_config

CHANCE = 0.25  # tiny data has 4 classes


def run_job(config) -> tuple[int, list[dict], str]:
    out = io.StringIO()
    code = run_headless(config, out)
    events = list(read_events(Path(config.runs_dir) / config.run_id / "events.jsonl"))
    return code, events, out.getvalue()


def final_val(events: list[dict]) -> float:
    return [e for e in events if e["kind"] == "validation"][-1]["acc"]


@pytest.fixture(scope="module")
def async_run(tiny_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("async")
    config = tiny_config(tiny_data, tmp, workers=2, epochs=2)
    return config, *run_job(config)


def test_async_run_learns_and_records_every_event_kind(async_run):
    config, code, events, out = async_run
    assert code == 0, out
    kinds = {e["kind"] for e in events}
    assert set(KINDS) - {"alert", "worker_restart"} <= kinds, f"missing kinds: {set(KINDS) - kinds}"
    assert all(e["v"] == 1 and e["run_id"] == config.run_id for e in events)
    assert {e["worker"] for e in events if e["kind"] == "worker_metrics"} == {0, 1}
    assert final_val(events) > CHANCE + 0.35, out
    end = [e for e in events if e["kind"] == "run_end"][-1]
    assert end["outcome"] == "finished"
    assert "validation @ version" in out and "run finished" in out


def test_async_checkpoints_exist_and_load(async_run, tiny_data):
    config, _, events, _ = async_run
    accs = [e["acc"] for e in events if e["kind"] == "validation"]
    for tag in ("last", "best"):
        payload = load_checkpoint(Path(config.checkpoints_dir) / config.run_id / f"{tag}.pt")
        # `best` is the (latest) epoch of the highest validation accuracy, not always the last.
        assert payload["epoch"] == (2 if tag == "last" else len(accs) - accs[::-1].index(max(accs)))
        assert payload["version"] > 0 and payload["best_val_acc"] == max(accs)
        assert payload["meta"]["run_id"] == config.run_id
        assert payload["config"]["workers"] == 2
        model = build_model("cnn", 4)
        model.load_state_dict(payload["model"])
        assert torch.isfinite(model.head[-1].weight).all()
    assert not list((Path(config.checkpoints_dir) / config.run_id).glob("*.tmp"))


def test_pushes_record_staleness(async_run):
    _, _, events, _ = async_run
    stale = [e["staleness"] for e in events if e["kind"] == "worker_metrics"]
    assert all(isinstance(s, int) and s >= 0 for s in stale)
    ps = [e for e in events if e["kind"] == "ps_metrics" and e["staleness"]["hist"]]
    assert ps and all(sum(e["staleness"]["hist"].values()) > 0 for e in ps)


def test_single_process_baseline_reaches_comparable_accuracy(async_run, tiny_data, tmp_path):
    _, _, async_events, _ = async_run
    code, events, out = run_job(tiny_config(tiny_data, tmp_path, workers=0, epochs=2))
    assert code == 0, out
    start = next(e for e in events if e["kind"] == "run_start")
    assert start["mode"] == "single"
    single, asynchronous = final_val(events), final_val(async_events)
    assert single > CHANCE + 0.35
    assert abs(single - asynchronous) < 0.2, (single, asynchronous)


def test_resume_continues_version_epoch_and_optimizer(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path, workers=2, epochs=1)
    code, first, out = run_job(config)
    assert code == 0, out
    v1 = load_checkpoint(Path(config.checkpoints_dir) / config.run_id / "last.pt")
    assert v1["epoch"] == 1
    resumed = subprocess.run(
        adt_command("run", "--no-ui", "--resume", config.run_id, "--epochs", "2",
                    "--runs-dir", config.runs_dir, "--checkpoints-dir", config.checkpoints_dir),
        env=child_env(), capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    events = list(read_events(Path(config.runs_dir) / config.run_id / "events.jsonl"))
    starts = [e for e in events if e["kind"] == "run_start"]
    assert [s["resumed"] for s in starts] == [False, True]
    assert starts[1]["version"] == v1["version"] and starts[1]["epoch"] == 1
    v2 = load_checkpoint(Path(config.checkpoints_dir) / config.run_id / "last.pt")
    assert v2["epoch"] == 2 and v2["version"] > v1["version"]
    # The update rule's state (every worker's momentum, the gap's running step) was carried over.
    assert v1["rule"]["rule"] == v2["rule"]["rule"] == config.update_rule == "dana-gap-aware"
    assert sorted(v1["rule"]["buffers"]) == sorted(v2["rule"]["buffers"]) == [0, 1]  # each worker's momentum
    assert v2["rule"]["gap_weight"] > v1["rule"]["gap_weight"] > 0 and v1["rule"]["lr"] > 0
    # The LR continues the schedule from the samples already seen: the resumed run's warmup (1
    # epoch) is behind it, so it starts at the peak and decays, rather than warming up again.
    # (`lr` is the LR of the last update, which had the samples of at most one batch per worker
    # still to come.)
    curve = LRSchedule(dataclasses.replace(config, epochs=2), 1200)
    after = [e for e in events if e["kind"] == "ps_metrics" and e["t"] > starts[1]["t"] and e["version"] > v1["version"]]
    assert after, events
    for e in after:
        # The last update's LR was taken at most one batch per worker before `samples_seen`, so
        # it lies on the curve somewhere in that window; the window may hold the warmup's end,
        # where the curve rises to the peak and then decays (a reporting interval that holds
        # just the first update after the resume sees exactly the peak), so bound it by the
        # window's lowest and highest point.
        updates = e["samples_seen"] / config.batch_size
        window = [updates - config.workers * k / 8 for k in range(9)] + [
            w for w in (curve.warmup,) if updates - config.workers <= w <= updates]
        assert min(map(curve, window)) <= e["lr"] <= max(map(curve, window)), e
    assert v2["samples_seen"] == 2 * 1200


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_signal_mid_run_stops_cleanly_with_checkpoint(sig, tiny_data, tmp_path):
    runs, ckpts = tmp_path / "runs", tmp_path / "checkpoints"
    proc = subprocess.Popen(
        adt_command("run", "--no-ui", "--data", str(tiny_data), "--epochs", "50", "--batch-size", "16",
                    "--loader-workers", "1", "--runs-dir", str(runs), "--checkpoints-dir", str(ckpts),
                    "--run-id", "sig", "--log-interval", "0.5"),
        env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    events_path = runs / "sig" / "events.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if events_path.exists() and '"worker_metrics"' in events_path.read_text():
            break
        time.sleep(0.2)
    tree = psutil.Process(proc.pid).children(recursive=True)
    assert len(tree) >= 3  # the PS, two workers, and their loader processes
    proc.send_signal(sig)
    start = time.monotonic()
    output, _ = proc.communicate(timeout=60)
    assert time.monotonic() - start < 15 + 5, output  # within the grace period
    assert proc.returncode == 130, output
    assert (ckpts / "sig" / "last.pt").is_file()
    load_checkpoint(ckpts / "sig" / "last.pt")
    events = list(read_events(events_path))
    end = [e for e in events if e["kind"] == "run_end"]
    assert end and end[0]["outcome"] == "stopped", output
    exits = {e["pid"]: e["code"] for e in events if e["kind"] == "process_exit" and e["reason"] != "lost"}
    assert len(exits) == 3 and set(exits.values()) == {0}, exits  # a stop is not a crash
    assert not [e for e in events if e["kind"] == "alert" and e["level"] == "error"], output
    gone, alive = psutil.wait_procs(tree, timeout=5)
    assert not alive, f"orphans: {alive}"


@pytest.mark.parametrize("flags, field", [
    (["--lr", "-1"], "lr"),
    (["--workers", "-2"], "workers"),
    (["--model", "vgg"], "model"),
    (["--data", "/nonexistent/adt-data"], "data directory"),
    (["--batch-size", "0"], "batch_size"),
    (["--update-rule", "fifo"], "update_rule"),
    (["--warmup", "soon"], "warmup"),
    (["--lr-schedule", "linear"], "lr_schedule"),
    (["--augment", "mixup"], "augment"),
    (["--label-smoothing", "1"], "label_smoothing"),
    (["--local-steps", "0"], "local_steps"),
    (["--outer-momentum", "1"], "outer_momentum"),
    (["--dc-lambda", "-1"], "dc_lambda"),
    (["--bn-recompute", "-1"], "bn_recompute"),
    (["--update-rule", "lookahead", "--optimizer", "adamw"], "update_rule"),
    (["--max-restarts", "-1"], "max_restarts"),
    (["--join-timeout", "0"], "join_timeout"),
])
def test_bad_config_value_names_field_and_exits_2(flags, field, tmp_path, capsys):
    from adt_tui.cli import main

    code = main(["run", "--no-ui", "--runs-dir", str(tmp_path / "runs"), *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert field in err and "Fix:" in err
    assert not (tmp_path / "runs").exists()  # nothing started


def test_bad_config_exit_code_from_the_real_command(tmp_path):
    result = subprocess.run(adt_command("run", "--no-ui", "--lr", "-0.1"), env=child_env(),
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    assert "'lr'" in result.stderr and result.stderr.count("\n") <= 2


def test_toml_config_is_read_and_flags_win(tmp_path, capsys):
    from adt_tui.cli import build_parser, config_from_args

    toml = tmp_path / "adt.toml"
    toml.write_text('model = "resnet18"\nlr = 0.2\n[run]\nepochs = 7\n')
    args = build_parser().parse_args(["run", "--config", str(toml), "--lr", "0.01"])
    config = config_from_args(args)
    assert (config.model, config.lr, config.epochs) == ("resnet18", 0.01, 7)
    toml.write_text("workers = -3\n")
    from adt_tui.cli import main

    assert main(["run", "--no-ui", "--config", str(toml)]) == 2
    assert "adt.toml" in capsys.readouterr().err


def test_nan_losses_never_break_the_event_stream(tmp_path):
    from engine.events import EventWriter

    writer = EventWriter(tmp_path / "e.jsonl", "r")
    writer.emit("validation", loss=math.nan, acc=0.0, nested={"x": math.inf})
    writer.close()
    (event,) = read_events(tmp_path / "e.jsonl")
    assert event["loss"] == "nan" and event["nested"]["x"] == "inf"
    json.dumps(event)
