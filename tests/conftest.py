"""Shared fixtures: tiny data made by the tests, and guards that no process outlives a test."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from adt_tui.supervisor import kill_all
from engine.config import RunConfig
from engine.synth import write_synthetic

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes, 16x16, 1200 train / 200 val samples in 4 + 2 shards."""
    return write_synthetic(tmp_path_factory.mktemp("data") / "tiny", num_classes=4, image_size=16,
                           train_samples=1200, val_samples=200, train_shards=4, val_shards=2,
                           progress=False)


def tiny_config(data: Path, tmp: Path, **overrides) -> RunConfig:
    """A job that trains the small CNN on tiny data in seconds on a CPU."""
    values = dict(data=str(data), model="cnn", workers=2, epochs=2, batch_size=32, lr=0.05,
                  loader_workers=0, runs_dir=str(tmp / "runs"), checkpoints_dir=str(tmp / "checkpoints"),
                  grace_period=15.0, log_interval=0.5)
    values.update(overrides)
    return RunConfig(**values).validate()


def adt_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "adt_tui.cli", *args]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(autouse=True)
def no_orphans():
    """Fail a test that leaves a child process behind; kill those children either way."""
    yield
    me = psutil.Process()
    left = me.children(recursive=True)
    kill_all(left)
    alive = [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"test left child processes behind: {[p.pid for p in left]} (alive now: {alive})"


@pytest.fixture
def leftover_guard(tmp_path: Path) -> Iterator[Callable[[], list[psutil.Process]]]:
    """Lists this test's live processes; kills any left at the end, even when the test failed.

    Found by the test's tmp_path (run dir, stand-in programs) on their command line, so a process
    that lost its parent (a killed runner's job, a daemon) is found too.
    """
    marker = str(tmp_path)

    def find() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if any(marker in part for part in proc.info.get("cmdline") or []):
                found.append(proc)
        return found

    def live() -> list[psutil.Process]:
        return [p for p in find() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    yield live
    kill_all(find())
