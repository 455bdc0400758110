"""Stale-code detection (adt_tui/watcher.py): which changes count, and how fast they arrive."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from watchfiles import Change

from adt_tui.stale import StartedSources
from adt_tui.watcher import SourceFilter, SourceWatcher
from engine.config import ConfigError, build_config

pytestmark = pytest.mark.timeout(30)


def test_filter_counts_python_sources_only(tmp_path: Path) -> None:
    counts = SourceFilter([tmp_path])
    assert counts(Change.modified, str(tmp_path / "engine" / "worker.py"))
    assert counts(Change.added, str(tmp_path / "pkg" / "new.py"))
    assert counts(Change.deleted, str(tmp_path / "old.py"))
    for ignored in ("README.md", "x.py~", ".x.py.swp", "4913", "__pycache__/x.cpython-311.pyc",
                    "data/gen.py", "checkpoints/x.py", "runs/r1/x.py", "sub/runs/x.py"):
        assert not counts(Change.modified, str(tmp_path / ignored)), ignored


def test_filter_judges_only_the_part_below_the_watched_root(tmp_path: Path) -> None:
    root = tmp_path / "data" / "project"  # the checkout itself lives below a folder named data
    assert SourceFilter([root])(Change.modified, str(root / "engine" / "x.py"))


def test_atomic_save_is_seen_and_data_writes_are_not(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    target = tmp_path / "model.py"
    target.write_text("A = 1\n")
    seen: list[tuple[tuple[str, ...], float]] = []

    async def scenario() -> float:
        watcher = SourceWatcher([tmp_path], lambda paths, at: seen.append((paths, at)))
        task = asyncio.create_task(watcher.run())
        await asyncio.sleep(0.3)  # let the OS watch start
        (tmp_path / "data" / "shard.py").write_text("# written by a job\n")
        (tmp_path / "notes.txt").write_text("not code\n")
        await asyncio.sleep(0.6)
        assert seen == []
        saved = time.monotonic()
        tmp = tmp_path / ".model.py.tmp"  # write elsewhere, then rename over: an editor's save
        tmp.write_text("A = 2\n")
        os.replace(tmp, target)
        while not seen and time.monotonic() - saved < 5:
            await asyncio.sleep(0.01)
        watcher.stop()
        await asyncio.wait_for(task, 5)
        return seen[0][1] - saved if seen else float("inf")

    latency = asyncio.run(scenario())
    assert seen and seen[0][0] == (str(target),)
    assert latency < 1.0, f"save reached the monitor after {latency:.2f} s"


def test_an_explicit_file_counts_alone(tmp_path: Path) -> None:
    watched = tmp_path / "train_hook.py"
    watcher = SourceWatcher([watched], lambda paths, at: None)
    assert watcher.roots == [tmp_path.resolve()]
    assert watcher.wanted(str(watched.resolve()))
    assert not watcher.wanted(str(tmp_path.resolve() / "neighbour.py"))


def test_a_file_watched_by_name_counts_whatever_its_kind(tmp_path: Path) -> None:
    counts = SourceFilter([tmp_path], files=[tmp_path / "adt.toml"])
    assert counts(Change.modified, str((tmp_path / "adt.toml").resolve()))
    assert not counts(Change.modified, str((tmp_path / "other.toml").resolve()))


def test_a_config_change_is_named_by_the_settings_it_changed(tmp_path: Path) -> None:
    toml, model = tmp_path / "adt.toml", tmp_path / "my_model.py"
    toml.write_text("lr = 0.05\n[run]\nepochs = 3\n")
    model.write_text("X = 1\n")
    sources = StartedSources([tmp_path / "engine", model, toml], str(toml))
    toml.write_text("# tuned\nlr = 0.1\nbatch_size = 32\n[run]\nepochs = 3\n")
    assert sources.names([str(toml.resolve()), str(model.resolve())]) == [
        "adt.toml (config changed: batch_size, lr)", "my_model.py"]
    assert sources.now() != sources.fingerprint
    toml.write_text("lr = \n")  # half way through an edit
    assert sources.name(str(toml.resolve())) == "adt.toml (config changed: not valid TOML now)"
    toml.write_text("lr = 0.05\n[run]\nepochs = 3\n")
    assert sources.now() == sources.fingerprint  # saved back: not stale


def test_a_restart_takes_the_changed_settings_and_keeps_the_flags(tmp_path: Path) -> None:
    toml = tmp_path / "adt.toml"
    toml.write_text("lr = 0.05\nepochs = 3\n")
    config = build_config(str(toml), {"lr": 0.01})  # --lr 0.01 beats the file
    assert config.config_file == str(toml.resolve())
    sources = StartedSources([toml], config.config_file)
    toml.write_text("lr = 0.2\nepochs = 9\n")
    restarted = sources.updated(config)
    assert (restarted.lr, restarted.epochs) == (0.01, 9)
    toml.write_text("epochs = -1\n")
    with pytest.raises(ConfigError, match="adt.toml: 'epochs'"):
        sources.updated(config)
