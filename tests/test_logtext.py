"""Log lines (adt_tui/logtext.py) and the log view: errors stand out, known noise folds, e jumps."""

from __future__ import annotations

from pathlib import Path

import pytest

from adt_tui.app import AdtApp
from adt_tui.gpustats import GpuStats
from adt_tui.logtext import Classifier, collapse

GLOO_WARNING = [
    "/usr/lib/python3/site-packages/torch/distributed/distributed_c10d.py:4193: UserWarning: You "
    "are using a Backend <class 'torch.distributed.distributed_c10d.ProcessGroupGloo'> as a "
    "ProcessGroup. This usage is deprecated since PyTorch 2.0.",
    "  current_device = _get_object_coll_device(group)",
]
TRACEBACK = [
    "Traceback (most recent call last):",
    '  File "engine/worker.py", line 12, in train',
    "    loss.backward()",
    "RuntimeError: CUDA out of memory",
]


def kinds(lines: list[str]) -> list[str]:
    return [e.kind for e in Classifier().feed(lines)]


def test_a_traceback_is_one_error_block_and_ends_at_its_exception() -> None:
    assert kinds(["[adt worker0] start", *TRACEBACK, "[adt worker0] next"]) == [
        "plain", "error", "error", "error", "error", "plain"]


def test_a_traceback_split_across_reads_stays_one_block() -> None:
    classifier = Classifier()
    first = [e.kind for e in classifier.feed(TRACEBACK[:2])]
    rest = [e.kind for e in classifier.feed(TRACEBACK[2:])]
    assert first + rest == ["error"] * 4


def test_known_noise_takes_its_source_line_along_and_folds_into_one_line() -> None:
    entries = list(Classifier().feed(["[adt ps] run r1", *GLOO_WARNING, "[adt ps] run_end"]))
    assert [e.kind for e in entries] == ["plain", "noise", "noise", "plain"]
    shown = [str(text) for text, _ in collapse(entries, show_noise=False)]
    assert len(shown) == 3 and "2 lines of known noise" in shown[1] and "Gloo" in shown[1]
    assert len(list(collapse(entries, show_noise=True))) == 4


def test_warnings_and_glog_errors_are_told_apart() -> None:
    assert kinds(["[W1124 13:44:03.07 foo.cpp:1] something odd", "[E1124 13:44:03.07 x.cpp:2] bad",
                  "ERROR: worker1 (pid 12) exited with code 1", "loss 0.3 acc 0.9"]) == [
        "warning", "error", "error", "plain"]


@pytest.mark.anyio
async def test_e_jumps_to_the_newest_error_in_another_process_log(tmp_path: Path) -> None:
    run = Path(__file__).parent / "fixtures" / "run"
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    for name in ("config.json", "events.jsonl"):
        (run_dir / name).write_text((run / name).read_text())
    (run_dir / "logs" / "ps.log").write_text("\n".join(["[adt ps] fine"] * 50) + "\n")
    filler = [f"[adt worker1] step {i}" for i in range(300)]
    (run_dir / "logs" / "worker1.log").write_text("\n".join([*GLOO_WARNING, *TRACEBACK, *filler])
                                                  + "\n")
    app = AdtApp(run_dir=run_dir, gpu=GpuStats(load=False))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        view = app.log_view
        assert view.active == "ps" and view.error_count == 0
        await pilot.press("e")
        while view.active != "worker1" or not view.error_count:
            await pilot.pause(0.05)
        await pilot.pause()
        log = view.query_one("#log")
        assert log.scroll_y < log.max_scroll_y  # not at the end: at the error, 300 lines up
        visible = "".join(str(log.render_line(y).text) for y in range(log.size.height))
        assert "RuntimeError: CUDA out of memory" in visible


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
