"""Layout regressions: the main screen and the help screen over a recorded run.

The recording (tests/fixtures/run/) is a real 3-worker run of the tiny data set; the clock is
frozen so the elapsed time cannot move. Update after an intended change with
`pytest tests/test_snapshots.py --snapshot-update` and look at snapshot_report.html.
"""

from __future__ import annotations

from pathlib import Path

from adt_tui.app import AdtApp

RUN = Path(__file__).parent / "fixtures" / "run"
SIZE = (160, 42)


def recorded_app() -> AdtApp:
    end = 1795527900.0  # after the recording ended: a finished run shows its own duration anyway
    return AdtApp(run_dir=RUN, clock=lambda: end)


def test_main_screen(snap_compare) -> None:
    assert snap_compare(recorded_app(), terminal_size=SIZE)


def test_help_screen(snap_compare) -> None:
    assert snap_compare(recorded_app(), press=["question_mark"], terminal_size=SIZE)
