"""--compare: a reference run's curves beside this one's, and where this run stands against it
at the same samples seen. Two real recordings of the tiny data (tests/fixtures/compare/: one
process, and 2 async workers, 8 epochs each) stand in for the two runs."""

from __future__ import annotations

import inspect
import io
import json
import shutil
from pathlib import Path

import pytest

from adt_tui.app import AdtApp
from adt_tui.charts import chart_spec
from adt_tui.compare import Comparison, Reference, standing
from adt_tui.expectation import SHAPING, TABLE, entries, matching
from adt_tui.gpustats import GpuStats
from adt_tui.headless import Printer
from adt_tui.series import Curves
from engine.config import RunConfig
from engine.errors import ConfigError
from engine.synth import write_synthetic

FIXTURES = Path(__file__).parent / "fixtures" / "compare"
OTHER_DATA = Path(__file__).parent / "fixtures" / "run"  # a recording of other tiny data


def events(run: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / run / "events.jsonl").read_text().splitlines()]


def validations(run: str) -> list[tuple[float, float]]:
    return [(e["samples_seen"], e["acc"]) for e in events(run) if e["kind"] == "validation"]


def copy_of_reference(tmp_path: Path, keep: int) -> Path:
    """The reference run as it was after its first `keep` validations (no run_end: still running)."""
    run_dir = tmp_path / "runs" / "single"
    run_dir.mkdir(parents=True)
    shutil.copy(FIXTURES / "single" / "config.json", run_dir)
    lines, seen = [], 0
    for e in events("single"):
        if e["kind"] == "validation":
            seen += 1
            if seen > keep:
                break
        lines.append(json.dumps(e))
    (run_dir / "events.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir


def test_standing_at_the_same_samples_and_the_ghost_series():
    ours, theirs = Curves.from_events(events("async")), Reference(str(FIXTURES / "single"))
    found = standing(ours, theirs)
    (x, acc), (x_ref, acc_ref) = validations("async")[-1], validations("single")[-1]
    assert x == x_ref  # both ran 8 epochs of the same data: the last validations line up
    assert found is not None and found.samples == x and not found.at_its_end
    assert found.points == pytest.approx(100 * (acc - acc_ref))
    assert found.text() == f"{'+' if acc >= acc_ref else '−'}{abs(100 * (acc - acc_ref)):.1f} points vs single at 3.2k samples"
    ghost = chart_spec("acc", ours, "samples", ghost=(theirs.name, theirs.curves)).lines
    line = next(line for line in ghost if line.label == "single")
    assert list(zip(line.xs, line.ys, strict=True)) == validations("single")
    loss = next(line for line in chart_spec("loss", ours, "samples", ghost=(theirs.name, theirs.curves)).lines
                if line.label == "single")
    assert len(loss.ys) == len(theirs.curves.train_loss[0]) and loss.ys == theirs.curves.train_loss[0].y


def test_a_reference_that_ended_earlier_is_met_at_its_end(tmp_path):
    run_dir = copy_of_reference(tmp_path, keep=3)
    with open(run_dir / "events.jsonl", "a") as f:  # it stopped there
        f.write(json.dumps({"v": 1, "t": 1796099500.0, "kind": "run_end", "run_id": "single",
                            "outcome": "stopped", "version": 75, "epoch": 3, "best_val_acc": None,
                            "message": "stopped on request"}) + "\n")
    reference = Reference("single", tmp_path / "runs")
    found = standing(Curves.from_events(events("async")), reference)
    x_ref, acc_ref = validations("single")[2]
    ours = dict(validations("async"))
    assert found is not None and found.at_its_end and found.samples == x_ref
    assert found.points == pytest.approx(100 * (ours[x_ref] - acc_ref))
    assert "at its last validation, 1.2k samples" in found.text()


def test_a_reference_still_running_is_read_again_as_it_grows(tmp_path):
    run_dir = copy_of_reference(tmp_path, keep=2)
    reference = Reference("single", tmp_path / "runs")
    ours = Curves.from_events(events("async"))
    early = standing(ours, reference)
    assert early is not None and not early.at_its_end and early.samples == validations("single")[1][0]
    full = (FIXTURES / "single" / "events.jsonl").read_text()
    grown = full[len((run_dir / "events.jsonl").read_text()):]
    with open(run_dir / "events.jsonl", "a") as f:
        f.write(grown)
    assert reference.refresh()
    later = standing(ours, reference)
    assert later is not None and later.samples == validations("single")[-1][0]


def test_a_reference_of_other_data_is_drawn_with_a_warning_naming_the_difference():
    reference = Reference(str(OTHER_DATA))
    start = events("async")[0]
    warning = reference.warning(start)
    assert warning is not None and start["data"]["fingerprint"] in warning
    assert reference.start["data"]["fingerprint"] in warning and "not comparable" in warning
    assert Reference(str(FIXTURES / "single")).warning(start) is None


def test_no_such_reference_is_a_config_error_naming_compare(tmp_path):
    with pytest.raises(ConfigError, match="'compare' names 'nosuch'"):
        Reference("nosuch", tmp_path)


def test_headless_lines_say_where_the_run_stands():
    out = io.StringIO()
    printer = Printer(out, Comparison(Reference(str(FIXTURES / "single"))))
    for e in events("async"):
        printer.event(e)
    lines = out.getvalue().splitlines()
    assert f"  compared with: {(FIXTURES / 'single').resolve()}" in lines
    assert sum("points vs single at" in line for line in lines if line.startswith("validation @")) == 8
    assert lines[-1].startswith("against the reference: ") and "points vs single at 3.2k samples" in lines[-1]


def test_monitor_with_a_ghost_line(snap_compare):
    end = 1796099600.0
    app = AdtApp(run_dir=FIXTURES / "async", clock=lambda: end, gpu=GpuStats(load=False),
                 comparison=Comparison(Reference(str(FIXTURES / "single"))))
    assert snap_compare(app, terminal_size=(160, 48))


def test_a_missing_reference_stops_adt_run_before_training_with_exit_2(tiny_data, tmp_path):
    import subprocess

    from tests.conftest import adt_command, child_env

    done = subprocess.run(adt_command("run", "--no-ui", "--data", str(tiny_data), "--runs-dir",
                                      str(tmp_path / "runs"), "--compare", "nosuch"),
                          capture_output=True, text=True, env=child_env(), timeout=120)
    assert done.returncode == 2, done.stderr
    assert "'compare' names 'nosuch'" in done.stderr and "Fix:" in done.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing started


def expectation_table(tmp_path: Path, **config_changes) -> Path:
    """A table of one expectation: the recorded single process's curve, for its data and settings."""
    start = events("single")[0]
    entry = {"source": "the single recording", "config": {**{k: start["config"][k] for k in SHAPING}, **config_changes},
             "data": {"fingerprint": start["data"]["fingerprint"], "num_classes": 4, "train_samples": 400},
             "curve": validations("single")}
    path = tmp_path / "expectations.json"
    path.write_text(json.dumps([entry]))
    return path


def test_without_compare_a_run_is_held_to_what_one_process_reaches_on_its_data(tmp_path):
    comparison = Comparison(expectations=expectation_table(tmp_path))
    assert comparison.standing(Curves()) is None and comparison.header(Curves(), None) is None  # not yet known
    ours = Curves()
    for e in events("async"):
        ours.apply(e)
        comparison.apply(e)
    found, against_run = comparison.standing(ours), standing(ours, Reference(str(FIXTURES / "single")))
    assert found is not None and found.reference == "single process"
    assert (found.points, found.samples) == pytest.approx((against_run.points, against_run.samples))
    assert comparison.header(ours, events("async")[0]).endswith("pts vs 1 process @3.2k")
    assert comparison.ghost("samples")[1].val_acc.y == [acc for _, acc in validations("single")]
    assert comparison.ghost("time") is None  # its times were another machine's


def test_headless_lines_say_where_the_run_stands_against_one_process(tmp_path):
    out = io.StringIO()
    printer = Printer(out, Comparison(expectations=expectation_table(tmp_path)))
    for e in events("async"):
        printer.event(e)
    lines = out.getvalue().splitlines()
    assert "  compared with: what one process reaches on this data and settings (the single recording)" in lines
    assert sum("points vs single process at" in line for line in lines if line.startswith("validation @")) == 8
    assert lines[-1].startswith("against the reference: ") and "vs single process at 3.2k samples" in lines[-1]


@pytest.mark.parametrize("change", [{"lr": 0.1}, {"batch_size": 32}, {"model": "resnet18"}, {"epochs": 4}])
def test_no_expectation_for_other_settings(tmp_path, change):
    comparison = Comparison(expectations=expectation_table(tmp_path, **change))
    for e in events("async"):
        comparison.apply(e)
    assert comparison.reference is None and comparison.standing(Curves.from_events(events("async"))) is None


def test_no_expectation_for_other_data(tmp_path):
    start = events("async")[0]
    assert matching(start, expectation_table(tmp_path)) is not None
    other = {**start, "data": {**start["data"], "fingerprint": "0" * 16}}
    assert matching(other, expectation_table(tmp_path)) is None
    assert matching({**start, "num_classes": 10}, expectation_table(tmp_path)) is None


def test_adts_own_expectations_fit_the_settings_they_claim():
    """Every shipped entry names settings the config accepts; the default job's entry holds
    today's defaults on the built-in data (a changed default makes it stale: rebuild it with
    `python -m bench.expectations`)."""
    shipped = entries(TABLE)
    assert shipped
    for entry in shipped:
        assert set(entry.config) == set(SHAPING), entry.source
        RunConfig(**entry.config).validate()
        xs = [x for x, _ in entry.curve]
        assert xs == sorted(xs) and all(0 <= acc <= 1 for _, acc in entry.curve)
    defaults, generator = RunConfig(), inspect.signature(write_synthetic).parameters
    start = {"config": {**defaults.to_dict(), "augment": "flip-crop"}, "num_classes": generator["num_classes"].default,
             "train_samples": generator["train_samples"].default,
             "data": {"source": "adt synthetic", "seed": generator["seed"].default,
                      "image_size": [generator["image_size"].default] * 2}}
    assert matching(start) is not None, "no expectation for the default job on the built-in data"
