"""Health alerts: the rules (engine/health.py) on their own, then each alert raised by a real job
that really is unhealthy, and the headless stale-code warning. Each job case reports its time
from bad condition to alert (printed; a JUnit property)."""

from __future__ import annotations

import math
import os
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.data import resolve_data
from engine.events import EventWriter, read_events
from engine.health import Health
from engine.server import ParameterServer
from engine.shards import encode_jpeg, write_shard_set
from engine.synth import make_image

from .conftest import tiny_config
from .jobs import FAST, HeadlessJob, change_source, copy_tree, latency, wait_for

CHANCE_WARMUP = 1  # RunConfig.chance_warmup_evals


# --- the rules ---------------------------------------------------------------------------------
def test_chance_accuracy_is_flagged_once_and_only_after_warmup():
    health = Health(4, warmup_evals=CHANCE_WARMUP)
    assert health.validation(1.38, 0.26, 200) == []  # the warm-up evaluation
    assert [a[1] for a in health.validation(1.38, 0.27, 200)] == ["chance_accuracy"]
    assert health.validation(1.38, 0.25, 200) == []  # said once


def test_accuracy_clear_of_chance_noise_is_not_flagged():
    health = Health(4, warmup_evals=0)
    # 3 standard errors of chance on 200 samples is 9.2 points: 35% is clear of it, 33% is not.
    assert health.validation(1.2, 0.35, 200) == []
    assert [a[1] for a in Health(4, 0).validation(1.2, 0.33, 200)] == ["chance_accuracy"]


def test_one_dip_of_a_learning_run_is_not_chance_but_two_in_a_row_are():
    """Training learns (loss well below ln C): validation at chance once is noise; twice in a row
    is validation data that does not match the training data."""
    health = Health(4, warmup_evals=0)
    health.train_metrics(0, 0.4, 0.9)
    assert health.validation(1.38, 0.25, 200) == []
    assert health.validation(0.5, 0.85, 200) == []  # recovered: the count starts over
    assert health.validation(1.38, 0.25, 200) == []
    assert [a[1] for a in health.validation(1.38, 0.25, 200)] == ["chance_accuracy"]


def test_chance_is_flagged_at_once_when_training_does_not_learn_either():
    health = Health(4, warmup_evals=0)
    health.train_metrics(0, 1.39, 0.26)  # ln 4 = 1.386: nothing learned
    assert [a[1] for a in health.validation(1.38, 0.25, 200)] == ["chance_accuracy"]


def test_evaluations_during_the_lr_warmup_are_not_judged():
    health = Health(4, warmup_evals=1)
    for _ in range(5):
        assert health.validation(1.38, 0.25, 200, warming_up=True) == []
    assert health.validation(1.38, 0.25, 200) == []  # the first judged one is the warm-up eval
    assert [a[1] for a in health.validation(1.38, 0.25, 200)] == ["chance_accuracy"]


def test_validation_loss_above_three_ln_c_twice_in_a_row_is_divergence():
    bound = 3 * math.log(4)
    health = Health(4, warmup_evals=5)
    assert health.validation(bound + 0.01, 0.9, 200) == []  # one high eval of a learning run: noise
    assert health.validation(1.0, 0.9, 200) == []
    assert health.validation(bound + 0.01, 0.9, 200) == []
    assert [a[1] for a in health.validation(bound + 0.01, 0.9, 200)] == ["val_loss_high"]
    assert health.diverged()


@pytest.mark.parametrize("loss, code", [(3e8, "val_loss_high"), (math.nan, "val_loss_nan"),
                                        (math.inf, "val_loss_nan")])
def test_loss_far_beyond_three_ln_c_or_not_finite_is_divergence_at_once(loss, code):
    health = Health(4, warmup_evals=5)
    assert [a[1] for a in health.validation(loss, 0.9, 200, warming_up=True)] == [code]
    assert health.diverged()


def test_non_finite_training_loss_is_flagged_once_per_worker():
    health = Health(4, warmup_evals=1)
    assert health.train_metrics(0, 1e9, 0.0) == []
    assert [a[1] for a in health.train_metrics(0, math.inf, 0.0)] == ["loss_nan"]
    assert health.train_metrics(0, math.nan, 0.0) == []
    assert [a[1] for a in health.train_metrics(1, math.nan, 0.0)] == ["loss_nan"]
    assert health.diverged()


# --- real jobs ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shuffled_data(tmp_path_factory) -> Path:
    """Images of 4 classes whose labels are a random permutation of balanced labels: no model can
    beat chance on it, and none gets above it by predicting the commonest label either."""
    out = tmp_path_factory.mktemp("shuffled") / "data"
    classes = ["n0", "n1", "n2", "n3"]
    for split, count, shards, seed in (("train", 400, 2, 0), ("val", 200, 1, 1)):
        rng = np.random.default_rng(seed)
        labels = rng.permutation(np.arange(count) % 4)
        samples = [(f"{split}_{i:05d}", encode_jpeg(make_image(i % 4, 4, 16, rng)), int(labels[i]))
                   for i in range(count)]
        write_shard_set(out / split, split, samples, count, shards, classes, (16, 16))
    return out


def test_labels_shuffled_against_images_raise_chance_accuracy_after_warmup(
        shuffled_data, tmp_path, record_property):
    job = HeadlessJob(tmp_path, "--data", str(shuffled_data), "--workers", "0", "--epochs", "3",
                      "--eval-every", "5", *FAST)
    assert job.wait(120) == 0, job.context()
    (alert,) = [a for a in job.events("alert") if a["code"] == "chance_accuracy"]
    schedule = job.events("run_start")[0]["schedule"]  # the default: 1 epoch of LR warmup
    batch = job.events("run_start")[0]["config"]["batch_size"]
    judged = [v for v in job.events("validation") if v["t"] <= alert["t"]
              and v["samples_seen"] / batch >= schedule["warmup_updates"]]
    assert len(judged) == CHANCE_WARMUP + 1, judged  # the first evaluation past both warm-ups
    latency(record_property, "chance accuracy -> alert (at the first eval past warm-up)",
            alert["t"] - judged[-1]["t"])
    assert "ERROR: validation accuracy" in job.output


def test_huge_learning_rate_diverges_and_stops_the_run(tiny_data, tmp_path, record_property):
    job = HeadlessJob(tmp_path, "--data", str(tiny_data), "--workers", "1", "--epochs", "20",
                      "--lr", "1e6", "--stop-on-divergence", *FAST)
    assert job.wait(120) == 1, job.context()
    end = job.events("run_end")[-1]
    assert end["outcome"] == "diverged", end
    alerts = job.events("alert")
    assert {"loss_nan", "val_loss_nan", "val_loss_high"} & {a["code"] for a in alerts}, alerts
    bad = [m for m in job.events("worker_metrics") if m["loss"] in ("nan", "inf")]
    if bad:
        latency(record_property, "non-finite training loss -> loss_nan alert", alerts[0]["t"] - bad[0]["t"])
    latency(record_property, "divergence alert -> run_end diverged", end["t"] - alerts[0]["t"])
    assert "run diverged" in job.output


def test_stopped_worker_is_flagged_silent_and_counted_again_when_back(tiny_data, tmp_path, record_property):
    job = HeadlessJob(tmp_path, "--data", str(tiny_data), "--epochs", "50", "--worker-timeout", "2", *FAST)
    job.wait_event("worker_metrics", 120, lambda e: e["worker"] == 1)
    worker = job.pids()["worker1"]
    try:
        signal_sent = time.time()
        os.kill(worker, signal.SIGSTOP)
        alert = job.wait_event("alert", 30, lambda e: e["code"] == "worker_silent")
    finally:
        os.kill(worker, signal.SIGCONT)
    latency(record_property, "worker silent (SIGSTOP, timeout 2s) -> worker_silent alert",
            alert["t"] - signal_sent)
    # Silence counts from the worker's last push, which came before the SIGSTOP: the alert comes
    # after the stop, but less than the timeout after it is possible.
    assert alert["worker"] == 1 and alert["t"] > signal_sent
    assert not [a for a in job.events("alert") if a["code"] == "worker_silent" and a["t"] < signal_sent]
    back = job.wait_event("worker_metrics", 30, lambda e: e["worker"] == 1 and e["t"] > alert["t"])
    assert any(a["code"] == "worker_lost" and "back" in a["message"] for a in job.events("alert")), back
    job.proc.send_signal(signal.SIGINT)
    assert job.wait(30) == 130, job.context()


def test_most_pushes_beyond_max_staleness_raise_staleness_high(tiny_data, tmp_path):
    """Driven through the PS's own entry points in-process: how stale real pushes get depends on
    the machine's scheduling, and the bound's drops keep round-robin workers near half."""
    config = tiny_config(tiny_data, tmp_path, max_staleness=1)
    events = EventWriter(tmp_path / "events.jsonl", "r")
    server = ParameterServer(config, resolve_data(config.data, "", ""), events, 1, torch.device("cpu"),
                             tmp_path / "ck", {"code": {"fingerprint": "f"}})
    try:
        server.register(0, {"pid": os.getpid(), "host": socket.gethostname(),
                            "code_fingerprint": "f"}).wait()
        grads = torch.zeros_like(server.flat.params)
        for _ in range(8):  # all from version 0: the first two apply, the rest are too stale
            server.push(0, 0, grads, server.flat.buffers.clone(), 16, None).wait()
        server.call(lambda: server.report(0.5))
    finally:
        server.close()
        events.close()
    alerts = [e for e in read_events(tmp_path / "events.jsonl") if e["kind"] == "alert"]
    assert [a["code"] for a in alerts] == ["staleness_high"], alerts
    assert server.dropped == 6 and server.version == 2


# --- stale code, headless --------------------------------------------------------------------
def test_headless_warns_once_per_burst_of_source_changes(tiny_data, tmp_path, record_property):
    tree = copy_tree(tmp_path / "src")
    job = HeadlessJob(tmp_path, "--data", str(tiny_data), "--workers", "0", "--epochs", "50", *FAST,
                      tree=tree)
    job.wait_event("worker_metrics", 120)
    code = job.events("run_start")[0]["code"]["fingerprint"]

    def warnings() -> list[str]:
        return [line for line in job.lines if "source changed under the running job" in line]

    saved = time.monotonic()
    change_source(tree, "engine/worker.py", "first save")  # one burst: two writes in a row
    change_source(tree, "engine/worker.py", "second save")
    wait_for("the stale-code warning", warnings, 10, job.context)
    latency(record_property, "source change -> headless stale-code warning", time.monotonic() - saved)
    time.sleep(1.5)  # well past the watcher's debounce: the burst must stay one warning
    (first,) = warnings()
    assert first.startswith("WARNING: source changed under the running job: engine/worker.py; restart")
    assert f"started with code {code}, now " in first
    change_source(tree, "adt_tui/panels.py", "another burst")
    wait_for("a second warning", lambda: len(warnings()) == 2, 10, job.context)
    assert "adt_tui/panels.py" in warnings()[1]
    job.proc.send_signal(signal.SIGINT)
    assert job.wait(30) == 130, job.context()


def test_silence_before_the_first_push_is_bounded_by_the_join_timeout(tiny_data, tmp_path):
    """A first step may take minutes (torch.compile on a busy CPU): until a worker's first push the
    silence bound is --join-timeout, then --worker-timeout. Driven in-process, with the worker's
    last sign of life set back in time instead of waiting."""
    config = tiny_config(tiny_data, tmp_path, worker_timeout=5.0, join_timeout=100.0)
    events = EventWriter(tmp_path / "events.jsonl", "r")
    server = ParameterServer(config, resolve_data(config.data, "", ""), events, 1, torch.device("cpu"),
                             tmp_path / "ck", {"code": {"fingerprint": "f"}})

    def silent_for(seconds: float) -> list[str]:
        server.workers[0].last_seen = time.monotonic() - seconds
        server.call(lambda: server.report(0.5))
        return [e["code"] for e in read_events(tmp_path / "events.jsonl") if e["kind"] == "alert"]

    try:
        server.register(0, {"pid": os.getpid(), "host": socket.gethostname(),
                            "code_fingerprint": "f"}).wait()
        assert silent_for(50) == []  # compiling: past --worker-timeout, within --join-timeout
        server.push(0, 0, torch.zeros_like(server.flat.params), None, 16, None).wait()
        assert silent_for(50) == ["worker_silent"]  # it has pushed: --worker-timeout holds
    finally:
        server.close()
        events.close()


def test_a_validation_longer_than_the_worker_timeout_counts_no_worker_out(tiny_data, tmp_path):
    """The PS validates (here: every validation shard arrives 4 s late) while its workers wait at
    the epoch barrier, far longer than --worker-timeout: that is the server's time, not the
    workers' silence. (A worker that really stops is still counted out: the test above.)"""
    slow_val = f"pipe:sleep 4; cat {tiny_data}/val/val-{{000000..000001}}.tar"
    job = HeadlessJob(tmp_path, "--train-url", str(tiny_data / "train"), "--val-url", slow_val,
                      "--epochs", "2", "--workers", "2", "--worker-timeout", "3", *FAST)
    assert job.wait(300) == 0, job.context()
    validations = job.events("validation")
    assert len(validations) == 2 and all(v["seconds"] > 3 for v in validations), validations
    assert not [a for a in job.events("alert") if a["code"] in ("worker_silent", "worker_lost")], \
        job.context()
    assert job.events("run_end")[-1]["outcome"] == "finished"
