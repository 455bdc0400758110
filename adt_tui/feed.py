"""One run's events as the monitor reads them: tailed from its events.jsonl in slices (so that a
long run's past never freezes the screen), folded into the run's state (adt_tui/state.py), its
comparison (adt_tui/compare.py) and, with `--tensorboard`, TensorBoard. No Textual."""

from __future__ import annotations

import time
from pathlib import Path

from engine.events import EventTail
from engine.rundir import RunDir

from .compare import Comparison
from .state import RunState
from .tensorboard import TensorBoardWriter

SLICE_BYTES = 64 * 1024  # events read at a time


class RunFeed:
    def __init__(self, run_dir: Path, comparison: Comparison, tensorboard: str = "") -> None:
        """`comparison` outlives the feed (a restart opens a new run, against the same reference)."""
        self.tail = EventTail(RunDir(run_dir).events)
        self.state = RunState()
        self.comparison = comparison
        self.tensorboard = TensorBoardWriter(tensorboard, run_dir.name) if tensorboard else None

    @property
    def path(self) -> Path:
        return self.tail.path

    def read(self, budget: float | None) -> bool:
        """Fold the new events in, for up to `budget` seconds (None: all of them); True when more
        are waiting."""
        start = time.perf_counter()
        while True:
            events = self.tail.poll(max_bytes=SLICE_BYTES)
            self.state.apply_all(events)
            for e in events:
                self.comparison.apply(e)
            if self.tensorboard is not None:
                self.tensorboard.write_all(events)
            if not events:
                if self.tensorboard is not None:
                    self.tensorboard.flush()
                return False
            if budget is not None and time.perf_counter() - start > budget:
                return True

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
