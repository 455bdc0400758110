"""Every custom message of the monitor, in one place (toolong style)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from .controller import Then


class SourceChanged(Message):
    """Watched Python sources changed while the job runs: the job now runs stale code."""

    def __init__(self, paths: tuple[str, ...], seen_at: float) -> None:
        super().__init__()
        self.paths = paths  # absolute paths of the changed files
        self.seen_at = seen_at  # time.monotonic() when the watcher delivered the batch


class JobStopped(Message):
    """A stop (or the stop half of a restart) finished in its worker thread."""

    def __init__(self, then: Then = None) -> None:
        super().__init__()
        self.then = then  # what to do next (adt_tui/controller.py): stay, restart, bring back, quit
