"""Layout regressions: the main screen at three terminal sizes and the help screen, over a
recorded run.

The recording (tests/fixtures/run/) is a real 3-worker run of the tiny data set; the clock is
frozen so the elapsed time cannot move, and NVML is off so a GPU machine draws the same screen.
Update after an intended change with `pytest tests/test_snapshots.py --snapshot-update` and look
at snapshot_report.html.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from adt_tui.app import AdtApp
from adt_tui.gpustats import GpuStats

RUN = Path(__file__).parent / "fixtures" / "run"


def recorded_app() -> AdtApp:
    end = 1795527900.0  # after the recording ended: a finished run shows its own duration anyway
    return AdtApp(run_dir=RUN, clock=lambda: end, gpu=GpuStats(load=False))


@pytest.mark.parametrize("size", [(80, 24), (160, 48), (200, 60)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_main_screen(snap_compare, size: tuple[int, int]) -> None:
    assert snap_compare(recorded_app(), terminal_size=size)


def test_main_screen_on_wall_time_with_noise_shown(snap_compare) -> None:
    assert snap_compare(recorded_app(), press=["x", "n"], terminal_size=(160, 48))


def test_narrow_screen_cycles_to_the_accuracy_chart(snap_compare) -> None:
    assert snap_compare(recorded_app(), press=["c"], terminal_size=(80, 24))


@pytest.mark.parametrize("presses", [2, 3], ids=["learning-rate", "staleness"])
def test_narrow_short_screen_draws_every_chart_c_picks(snap_compare, presses: int) -> None:
    """At 80x24 c went loss -> accuracy -> blank -> blank: the learning-rate and staleness charts
    were hidden by the short layout's rule even when picked."""
    assert snap_compare(recorded_app(), press=["c"] * presses, terminal_size=(80, 24))


def test_narrow_short_screen_with_logs_open_keeps_a_readable_chart(snap_compare) -> None:
    assert snap_compare(recorded_app(), press=["l"], terminal_size=(80, 24))


def test_help_screen(snap_compare) -> None:
    assert snap_compare(recorded_app(), press=["question_mark"], terminal_size=(160, 48))
