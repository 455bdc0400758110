"""The series fold (adt_tui/series.py): bounded curves for the charts of the monitor and reports."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from adt_tui.app import AdtApp
from adt_tui.gpustats import GpuStats
from adt_tui.series import Curves, Series, decimate
from adt_tui.state import RunState
from bench.monitor_load import synthetic_events
from engine.config import RunConfig

FIXTURES = Path(__file__).parent / "fixtures"
TIMING = {"data": 1.0, "compute": 2.0, "push_pull": 1.0}


def ev(kind: str, t: float = 1.0, **fields: object) -> dict:
    return {"v": 1, "t": t, "kind": kind, "run_id": "r1", **fields}


def test_decimate_keeps_first_last_and_extrema() -> None:
    rng = random.Random(0)
    values = [rng.random() for _ in range(10_000)]
    values[3_333], values[7_777] = 50.0, -50.0  # a spike and a dip
    kept = decimate(values, 200)
    assert len(kept) <= 200
    assert kept[0] == 0 and kept[-1] == len(values) - 1
    assert 3_333 in kept and 7_777 in kept
    assert kept == sorted(kept)


def test_series_stays_bounded_and_keeps_the_spike_and_the_newest_point() -> None:
    series = Series(capacity=256)
    for i in range(100_000):
        series.add(float(i), float(i), 500.0 if i == 31_337 else 1.0 / (1 + i))
    assert len(series) <= 256 and series.added == 100_000
    assert series.x[0] == 0 and series.x[-1] == 99_999  # the end is never dropped
    assert max(series.y) == 500.0 and min(series.y) == 1.0 / 100_000
    xs, ys = series.points("samples", target=64)
    assert len(xs) <= 64 and xs[-1] == 99_999 and 500.0 in ys


def test_non_finite_values_are_not_points() -> None:
    series = Series()
    series.add(0, 0, float("nan"))
    series.add(1, 1, float("inf"))
    series.add(2, 2, 0.5)
    assert series.y == [0.5]


def test_recorded_run_gives_every_curve_on_both_axes() -> None:
    curves = RunState.from_file(FIXTURES / "run" / "events.jsonl").curves
    assert curves.workers == [0, 1, 2]
    assert len(curves.val_acc) == 15 and curves.chance == 0.25
    assert len([m for m in curves.epochs if m.label.startswith("epoch")]) == 15
    assert curves.val_acc.x[-1] == 6000  # the PS's samples_seen at the last validation
    for series in [*curves.train_loss.values(), curves.val_loss, curves.lr]:
        assert series.x == sorted(series.x) and series.t == sorted(series.t)
    assert curves.lr.last == 0.02 and curves.staleness_max.y


def test_an_interval_without_a_step_is_not_a_point() -> None:
    curves = Curves()
    curves.apply(ev("worker_metrics", worker=0, samples=0, loss=0.0, acc=0.0, timing={}))
    curves.apply(ev("worker_metrics", worker=0, samples=64, loss=2.0, acc=0.1, timing=TIMING))
    assert curves.train_loss[0].y == [2.0]


def test_samples_axis_sums_the_workers_between_server_reports() -> None:
    curves = Curves()
    curves.apply(ev("run_start", t=0))
    curves.apply(ev("worker_metrics", t=1, worker=0, samples=100, loss=2, acc=0.1, timing=TIMING))
    curves.apply(ev("worker_metrics", t=2, worker=1, samples=50, loss=2, acc=0.1, timing=TIMING))
    curves.apply(ev("ps_metrics", t=3, samples_seen=200, lr=0.1, staleness={"p50": 1, "max": 2}))
    curves.apply(ev("worker_metrics", t=4, worker=0, samples=200, loss=1, acc=0.2, timing=TIMING))
    assert curves.train_loss[0].x == [100, 250] and curves.train_loss[1].x == [150]
    assert curves.lr.x == [200] and curves.lr.t == [3]


def test_resume_continues_the_samples_axis_instead_of_going_back() -> None:
    curves = Curves()
    curves.apply(ev("run_start", t=0, epoch=0))
    curves.apply(ev("epoch_end", t=5, epoch=0, samples_seen=400))
    curves.apply(ev("ps_metrics", t=6, samples_seen=500, lr=0.1))
    # The resume redoes epoch 1 from its start: the PS counts from 400 again.
    curves.apply(ev("run_start", t=9, epoch=1, resumed=True))
    curves.apply(ev("ps_metrics", t=10, samples_seen=450, lr=0.1))
    assert curves.lr.x == [500, 550]
    assert [m.label for m in curves.epochs] == ["epoch 1", "resumed"]


def test_staleness_median_counts_every_push_the_ps_saw() -> None:
    """From the PS's per-interval histograms: every push, not one sample per worker report (the
    headless summary once said "max 8" where no progress line had shown more than 3)."""
    curves = Curves()
    for hist in ({"0": 3, "1": 1}, {"1": 2, "5": 1}):
        curves.apply(ev("ps_metrics", version=1, epoch=0, samples_seen=64, updates_per_s=1.0, lr=0.1,
                        dropped=0, staleness={"p50": 1, "p95": 5, "max": 5, "hist": hist}))
    curves.apply(ev("worker_metrics", worker=0, samples=1, loss=1, acc=0.5, staleness=9, timing=TIMING))
    assert curves.staleness_median() == 1 and max(curves.staleness_counts) == 5
    assert sum(curves.staleness_counts.values()) == 7


@pytest.mark.anyio
@pytest.mark.timeout(300)
async def test_a_100k_event_file_renders_its_final_state(tmp_path: Path) -> None:
    """A benchmark more than a test: prints the time to the final state on screen."""
    lines = synthetic_events(100_000, 8)
    run_dir = tmp_path / "bench"
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(RunConfig(workers=8).to_dict()))
    (run_dir / "events.jsonl").write_text("\n".join(lines) + "\n")
    app = AdtApp(run_dir=run_dir, gpu=GpuStats(load=False))
    start = time.perf_counter()
    async with app.run_test(size=(160, 48)) as pilot:
        while not (app.state.events == len(lines) and app.state.ended):
            await pilot.pause(0.05)
        loss = app.charts["loss"]
        while loss.drawn_key is None or loss.drawn_key[0] != app.state.curves.changes:
            await pilot.pause(0.05)
        elapsed = time.perf_counter() - start
        assert "FINISHED" in str(app.header.render())
        spec = loss.spec
        assert spec is not None and len(spec.lines) == 8 + 1  # 8 workers and the validation
        assert all(len(line.xs) <= 2 * loss.size.width + 2 for line in spec.lines)
        newest = app.state.curves.samples
        assert max(line.xs[-1] for line in spec.lines) == newest  # the end is drawn
    print(f"100,000 events: final state and charts on screen after {elapsed:.2f} s")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_the_headless_printer_closes_with_the_same_curves() -> None:
    import io

    from adt_tui.headless import Printer
    from engine.events import read_events

    out = io.StringIO()
    printer = Printer(out)
    for event in read_events(FIXTURES / "run" / "events.jsonl"):
        printer.event(event)
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("curves: train loss") and "val acc 35.0% -> 86.2% (best 93.8%" in last


def test_x_axis_labels_never_repeat_early_in_a_run() -> None:
    from adt_tui.charts import x_tick_labels

    _, labels = x_tick_labels(1290, 1296, 4, "samples")  # was "1.29k 1.29k 1.29k"
    assert len(set(labels)) == len(labels) >= 2 and labels[0] == "1,290"
    _, labels = x_tick_labels(0.2, 2.4, 6, "time")  # half-second steps round to whole seconds
    assert len(set(labels)) == len(labels)
    assert x_tick_labels(0, 60_000, 4, "samples")[1] == ["0", "20k", "40k", "60k"]
