"""What `adt run --no-ui` prints, fed real event shapes: lines that fit the terminal, say what
they count, and stop when training has."""

from __future__ import annotations

import io

import pytest

from adt_tui.headless import Printer
from engine.config import ConfigError, RunConfig

from .test_series import ev


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def start(printer: Printer, epochs: int = 2) -> None:
    printer.event(ev("run_start", run_id="r", model="cnn", mode="async", workers=2, train_samples=6000,
                     val_samples=1000, code={"fingerprint": "c"}, resumed=False, checkpoint_dir="ck",
                     config={"epochs": epochs, "log_interval": 1.0},
                     data={"train": ["t.tar"], "val": ["v.tar"]}))


def progress(epoch: int, p50: float | None, samples: int = 640) -> dict:
    return ev("ps_metrics", version=10, epoch=epoch, samples_seen=samples, updates_per_s=12.0, lr=0.1,
              dropped=0, staleness={"p50": p50, "p95": 3, "max": 3, "hist": {"1": 9, "3": 1}})


def test_progress_line_never_wraps_in_an_80_column_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    out = Terminal()
    printer = Printer(out)
    start(printer)
    printer.event(progress(0, 1.0))
    drawn = out.getvalue().rpartition("\r")[2].removesuffix("\033[K")
    assert 0 < len(drawn) < 80 and drawn.startswith("[")


def test_progress_before_any_push_says_dash_not_none():
    out = io.StringIO()
    printer = Printer(out)
    start(printer)
    printer.event(progress(0, None))
    assert "staleness p50 - max 3 (last 1s)" in out.getvalue() and "None" not in out.getvalue()


def test_no_progress_line_after_the_last_epoch_ended():
    out = io.StringIO()
    printer = Printer(out)
    start(printer, epochs=2)
    printer.event(ev("epoch_end", epoch=1, version=188, samples_seen=12000))
    printer.event(progress(2, 1.0, samples=12000))  # the PS's report after its last validation
    assert "epoch 3/2" not in out.getvalue() and "epoch 2/2 0/6000" not in out.getvalue()


def test_closing_summary_says_its_staleness_counts_every_push():
    out = io.StringIO()
    printer = Printer(out)
    start(printer)
    printer.event(progress(0, 1.0))
    printer.event(ev("run_end", outcome="finished", message="all epochs done", version=10, best_val_acc=0.5))
    assert "staleness of all 10 pushes: median 1, max 3" in out.getvalue()


def test_an_unknown_choice_lists_the_choices_as_words_not_a_tuple():
    with pytest.raises(ConfigError) as caught:
        RunConfig(update_rule="fifo").validate()
    assert "use one of auto, sgd, lr/staleness," in str(caught.value) and "(" not in str(caught.value).split("Fix:")[1]
