"""The event fold (adt_tui/state.py): what the monitor, printer and reports read."""

from __future__ import annotations

import math
from pathlib import Path

from adt_tui.state import RunState, describe_exit

FIXTURES = Path(__file__).parent / "fixtures"


def ev(kind: str, t: float = 1.0, **fields: object) -> dict:
    return {"v": 1, "t": t, "kind": kind, "run_id": "r1", **fields}


def test_recorded_run_folds_to_its_final_numbers() -> None:
    state = RunState.from_file(FIXTURES / "run" / "events.jsonl")
    assert state.run_id == "fixture-run"
    assert state.outcome == "finished"
    assert sorted(state.workers) == [0, 1, 2]
    assert all(w.exited and w.exit_code == 0 for w in state.workers.values())
    assert state.server.version and state.server.version > 0
    assert state.validation is not None and state.best_val_acc is not None
    assert state.checkpoints and state.skipped == 0
    assert state.elapsed(now=1e12) == state.end_t - state.start_t


def test_nan_strings_become_floats_and_stay_off_the_charts() -> None:
    state = RunState()
    timing = {"data": 1.0, "compute": 1.0, "push_pull": 1.0}
    state.apply(ev("worker_metrics", worker=0, epoch=0, step=1, loss="nan", acc=0.5, timing=timing))
    state.apply(ev("worker_metrics", worker=0, epoch=0, step=2, loss="inf", acc=0.5, timing=timing))
    w = state.workers[0]
    assert math.isinf(w.loss)  # the numbers say it
    assert len(state.curves.train_loss[0]) == 0 and len(state.curves.train_acc[0]) == 2


def test_unknown_kind_and_newer_schema_are_skipped() -> None:
    state = RunState()
    state.apply(ev("something_new"))
    state.apply({**ev("alert", level="error", code="x", message="m"), "v": 2})
    assert state.skipped == 2 and state.events == 0 and not state.alerts


def test_a_killed_worker_is_an_error_alert_once_even_when_written_down_later() -> None:
    state = RunState()
    state.apply(ev("run_start", mode="async", workers=2, pid=10))
    state.apply(ev("worker_join", worker=1, pid=12))
    exit_event = ev("process_exit", role="worker", worker=1, pid=12, code=-9, reason="seen")
    state.apply(exit_event)
    state.apply(exit_event)  # the supervisor's copy in the file
    assert state.workers[1].status == "killed (SIGKILL)"
    assert [a.code for a in state.alerts] == ["process_exit"]
    assert state.alerts[0].level == "error" and "worker 1" in state.alerts[0].message


def test_clean_exits_after_the_end_are_not_alerts() -> None:
    state = RunState()
    state.apply(ev("run_start", mode="async", workers=1, pid=10))
    state.apply(ev("run_end", outcome="finished", best_val_acc=0.9))
    state.apply(ev("process_exit", role="ps", worker=None, pid=10, code=0))
    assert not state.alerts and state.server.status == "exited 0" and state.best_val_acc == 0.9


def test_resume_in_the_same_file_keeps_curves_and_clears_the_end() -> None:
    state = RunState()
    state.apply(ev("run_start", t=1, mode="async", workers=1, pid=10))
    state.apply(ev("worker_metrics", worker=0, loss=2.0, acc=0.1, timing={"compute": 1.0}))
    state.apply(ev("run_end", t=5, outcome="stopped"))
    state.apply(ev("run_start", t=9, mode="async", workers=1, pid=20, resumed=True))
    assert state.outcome is None and state.end_t is None and state.starts == 2
    assert state.server.pid == 20 and state.start_t == 1
    assert state.curves.train_loss[0].y == [2.0]


def test_engine_alerts_are_kept_as_reported() -> None:
    state = RunState()
    state.apply(ev("alert", level="error", code="chance_accuracy", message="at chance", worker=None))
    assert state.alerts[-1].message == "at chance" and state.alerts[-1].code == "chance_accuracy"


def test_describe_exit() -> None:
    assert describe_exit(0) == "exited 0"
    assert describe_exit(-15) == "killed (SIGTERM)"
    assert describe_exit(None) == "exited"


def test_an_exit_without_code_is_replaced_by_the_one_with_code() -> None:
    state = RunState()
    state.apply(ev("run_start", mode="async", workers=2, pid=10))
    state.apply(ev("worker_join", worker=1, pid=12))
    state.apply(ev("process_exit", role="worker", worker=1, pid=12, code=None, reason="lost"))
    state.apply(ev("process_exit", role="worker", worker=1, pid=12, code=-9, reason="seen"))
    assert state.workers[1].status == "killed (SIGKILL)"
    assert [a.message for a in state.alerts] == ["worker 1 (pid 12) killed (SIGKILL)"]


def test_epochs_read_the_same_for_server_workers_and_headless_at_the_end():
    from adt_tui.panels import epoch_cell

    # A finished 3-epoch run: the PS counted 3 epochs done, each worker was in epoch index 2.
    assert epoch_cell(3, 3) == epoch_cell(2, 3) == "3/3"
    assert epoch_cell(0, 3) == "1/3" and epoch_cell(None, 3) == "-" and epoch_cell(1, None) == "2"


def test_an_epoch_end_moves_the_version_past_the_last_report():
    """A stop right after an epoch ends is reported at the epoch's end, not at the report before."""
    state = RunState()
    state.apply(ev("ps_metrics", version=83, epoch=0))
    state.apply(ev("epoch_end", epoch=0, version=96))
    assert state.server.version == 96 and state.epochs_done == 1
    state.apply(ev("ps_metrics", t=2.0, version=97, epoch=1))
    assert state.server.version == 97
