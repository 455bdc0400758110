"""Why async lags: each cause the monitor names, on a real run shaped to show it, and none on a
healthy run (no crying wolf)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from adt_tui.compare import Standing
from adt_tui.diagnose import BEHIND, WINDOW, Symptoms, explain
from tests.jobs import HeadlessJob, wait_for

QUICK = ("--loader-workers", "0", "--log-interval", "0.25", "--batch-size", "16")
SHAPES = {
    "healthy": ("--workers", "2", "--epochs", "2"),
    "staleness": ("--workers", "4", "--epochs", "3", "--update-rule", "sgd", "--overlap"),
    # 3 epochs: the barriers start the workers together (a first epoch alone may run them one
    # after another when one starts late, and nothing is stale then).
    "dropped": ("--workers", "3", "--epochs", "3", "--max-staleness", "1"),
    "warmup": ("--workers", "2", "--epochs", "2", "--warmup", "20ep"),
    "ps_busy": ("--workers", "2", "--epochs", "1", "--eval-every", "1", "--max-updates", "16"),
    "slow_worker": ("--workers", "2", "--epochs", "3"),  # worker 1 runs a tenth of the time
    "batchnorm": ("--workers", "2", "--epochs", "2", "--bn-recompute", "0"),  # with STUCK_BATCHNORM
}
# A model whose BatchNorm running statistics never move from a variance of 100: the workers train
# on batch statistics, the PS (averaging the workers' running ones) validates with the stuck ones.
STUCK_BATCHNORM = """
from engine.models import SmallCNN

def build(num_classes):
    model = SmallCNN(num_classes)
    for m in model.modules():
        if hasattr(m, "running_var"):
            m.momentum = 0.0
            m.running_var.fill_(100.0)
    return model
"""


def throttle(pid: int, done: threading.Event) -> None:
    """Stop a process 9 tenths of the time, as a GPU shared without MPS or a busy host would."""
    while not done.is_set():
        try:
            os.kill(pid, signal.SIGSTOP)
            done.wait(0.9)
            os.kill(pid, signal.SIGCONT)
            done.wait(0.1)
        except ProcessLookupError:
            return


def causes_seen(job: HeadlessJob) -> set[str]:
    """Every cause the fold found at any report of the run."""
    symptoms, seen = Symptoms(), set()
    for e in job.events():
        symptoms.apply(e)
        if e["kind"] == "ps_metrics":
            seen |= {f.cause for f in symptoms.findings()}
    return seen


@pytest.mark.parametrize("shape", list(SHAPES))
def test_each_cause_shows_on_a_run_shaped_for_it_and_none_on_a_healthy_run(shape, tiny_data, tmp_path):
    model = tmp_path / "stuck_bn.py"
    model.write_text(STUCK_BATCHNORM)
    extra = ("--model", f"{model}:build") if shape == "batchnorm" else ()
    job = HeadlessJob(tmp_path, "--data", str(tiny_data), *SHAPES[shape], *extra, *QUICK)
    done = threading.Event()
    if shape == "slow_worker":
        wait_for("the workers to join", lambda: len(job.events("worker_join")) == 2, 120, job.context)
        threading.Thread(target=throttle, args=(job.pids()["worker1"], done), daemon=True).start()
    try:
        assert job.wait(300) == 0, job.context()
    finally:
        done.set()
    seen = causes_seen(job)
    assert seen == (set() if shape == "healthy" else {shape}), seen


def test_explain_speaks_only_when_the_run_trails_its_reference():
    symptoms = Symptoms()
    symptoms.apply({"kind": "run_start", "workers": 3, "config": {"max_staleness": 1, "batch_size": 16},
                    "schedule": {"warmup_updates": 0}, "update_rule": "lookahead", "train_samples": 1200})
    symptoms.apply({"kind": "ps_metrics", "version": 30, "dropped": 10, "samples_seen": 480,
                    "staleness": {"p50": 1, "p95": 2, "max": 3}, "lr": 0.05, "busy": 0.1})
    assert [f.cause for f in symptoms.findings()] == ["dropped"]
    assert explain(Standing(-(BEHIND - 0.5), 480, "ref", "ref"), symptoms) is None  # within a few points
    assert explain(Standing(+4.0, 480, "ref", "ref"), symptoms) is None  # ahead
    assert explain(None, symptoms) is None  # nothing to compare with yet
    why = explain(Standing(-5.2, 480, "ref", "ref"), symptoms)
    assert why is not None and why.cause == "dropped"
    assert why.text.startswith("5.2 points behind ref at 480 samples; likely dropped: 10 of 40 pushes")
    assert "--max-staleness" in why.text
    assert symptoms.findings()[0].fix.endswith("with --update-rule dana-gap-aware")  # auto's rule for 3


def test_a_fix_does_not_suggest_the_rule_the_run_already_has():
    fixes = {}
    for rule, bound, p95 in (("dana-gap-aware", 1, 2), ("dana-gap-aware", 0, 9), ("sgd", 0, 9)):
        symptoms = Symptoms()
        symptoms.apply({"kind": "run_start", "workers": 3, "config": {"max_staleness": bound, "batch_size": 16},
                        "schedule": {"warmup_updates": 0}, "update_rule": rule, "train_samples": 1200})
        for _ in range(WINDOW):  # staleness is judged on a window of reports
            symptoms.apply({"kind": "ps_metrics", "version": 30, "dropped": 10 * bound, "samples_seen": 480,
                            "staleness": {"p50": p95 // 2, "p95": p95, "max": 12}, "lr": 0.05, "busy": 0.1})
        fixes |= {(f.cause, rule): f.fix for f in symptoms.findings()}
    assert fixes == {("dropped", "dana-gap-aware"): "a larger --max-staleness (or 0, no bound)",
                     ("staleness", "dana-gap-aware"): "fewer workers",
                     ("staleness", "sgd"): "--update-rule dana-gap-aware, or fewer workers"}
