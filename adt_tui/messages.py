"""Every custom message of the monitor, in one place (toolong style)."""

from __future__ import annotations

from textual.message import Message


class SourceChanged(Message):
    """Watched Python sources changed while the job runs: the job now runs stale code."""

    def __init__(self, paths: tuple[str, ...], seen_at: float) -> None:
        super().__init__()
        self.paths = paths  # absolute paths of the changed files
        self.seen_at = seen_at  # time.monotonic() when the watcher delivered the batch


class JobStopped(Message):
    """A stop (or the stop half of a restart) finished in its worker thread."""

    def __init__(self, then: str | None = None) -> None:
        super().__init__()
        # what to start next: None, "resume", "fresh", or "bring-back:WORKER:WHY" (a resume that
        # first records the worker's restart)
        self.then = then
