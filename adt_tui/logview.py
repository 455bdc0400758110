"""The log view: the tail of each process's log (runs/<id>/logs/<name>.log), one tab per process.

Errors and whole tracebacks are highlighted, known third-party noise is folded into one dim line
(`n` shows it; the files keep everything), and `e` jumps to the newest error. The rules for what
a line is live in logtext.py.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import RichLog, Tab, Tabs

from .logtext import Classifier, Entry, collapse

MAX_ENTRIES = 2000  # lines kept per view; the file has the rest


class LogView(Vertical):
    """Tabs pick the process; the newest lines follow unless you scrolled up (or jumped)."""

    TAIL_BYTES = 32 * 1024  # what a newly chosen log shows of its past

    def __init__(self) -> None:
        super().__init__(id="logs")
        self.border_title = "logs"
        self.sources: dict[str, Path] = {}
        self.show_noise = False
        self._offset = 0
        self._entries: deque[Entry] = deque(maxlen=MAX_ENTRIES)
        self._classifier = Classifier()
        self._error_lines: list[int] = []  # RichLog line numbers of errors, newest last
        self._written = 0  # lines written since the last clear (one per Text: no wrapping)
        self._jump_pending = False  # select_then_jump: jump once the chosen tab has loaded

    def compose(self) -> ComposeResult:
        yield Tabs(id="log-tabs")
        # Unbounded here: trimming would shift the error line numbers; _write redraws instead.
        yield RichLog(id="log", wrap=False, auto_scroll=True)

    def set_sources(self, sources: dict[str, Path]) -> None:
        """The processes to offer (name -> log file); keeps the chosen one if it is still there."""
        if list(sources) == list(self.sources) and sources == self.sources:
            return
        tabs = self.query_one(Tabs)
        for name in sources:
            if name not in self.sources:
                tabs.add_tab(Tab(name, id=f"log-{name}"))
        changed = {n: p for n, p in sources.items() if self.sources.get(n) != p}
        self.sources = dict(sources)
        if self.active in changed:
            self._load()

    @property
    def active(self) -> str | None:
        tab = self.query_one(Tabs).active_tab
        return tab.id.removeprefix("log-") if tab and tab.id else None

    def on_tabs_tab_activated(self, event: Tabs.TabActivated) -> None:
        event.stop()
        self._load()

    def _load(self) -> None:
        """Show the end of the chosen log from scratch."""
        self._offset = 0
        self._entries.clear()
        self._classifier = Classifier()
        self._redraw()
        path = self.sources.get(self.active or "")
        if path is None:
            return
        try:
            size = path.stat().st_size
        except OSError:
            return
        self._offset = max(0, size - self.TAIL_BYTES)
        self.refresh_tail(skip_partial=self._offset > 0)
        if self._jump_pending:  # after the log's own scroll to the end, which these writes queued
            self._jump_pending = False
            self.query_one(RichLog).call_after_refresh(self.jump_to_newest_error)  # its own queue

    def refresh_tail(self, skip_partial: bool = False) -> None:
        """Append what the chosen log gained since the last call."""
        path = self.sources.get(self.active or "")
        if path is None:
            return
        try:
            with open(path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read(1 << 20)
        except OSError:
            return
        end = chunk.rfind(b"\n") + 1  # whole lines only; the rest waits for the next refresh
        if end == 0:
            return
        self._offset += end
        lines = chunk[:end].decode("utf-8", errors="replace").split("\n")[:-1]
        if skip_partial:  # we started mid-file: drop the cut first line
            lines = lines[1:]
        entries = list(self._classifier.feed(lines))
        self._entries.extend(entries)
        self._write(entries)

    def _write(self, entries: list[Entry]) -> None:
        if self._written + len(entries) > 2 * MAX_ENTRIES and entries is not self._entries:
            self._redraw()  # start over from the kept entries (which already hold these)
            return
        log = self.query_one(RichLog)
        log.auto_scroll = log.is_vertical_scroll_end or not self._written  # follow only at the end
        for text, is_error in collapse(entries, self.show_noise):
            if is_error:
                self._error_lines.append(self._written)
            log.write(text)
            self._written += 1

    def _redraw(self) -> None:
        self.query_one(RichLog).clear()
        self._error_lines, self._written = [], 0
        self._write(self._entries)  # type: ignore[arg-type]

    def toggle_noise(self) -> None:
        self.show_noise = not self.show_noise
        self._redraw()

    @property
    def error_count(self) -> int:
        return len(self._error_lines)

    def jump_to_newest_error(self) -> bool:
        """Scroll to the newest error of this tab; False if it has none."""
        if not self._error_lines:
            return False
        log = self.query_one(RichLog)
        log.auto_scroll = False
        line = self._error_lines[-1]
        # A traceback's newest error line is its exception: show the frames above it too.
        log.scroll_to(y=max(0, line - log.size.height // 2), animate=False, immediate=True)
        return True

    def tabs_with_errors(self) -> list[str]:
        """Processes whose log tail holds an error (to jump to when the shown one has none)."""
        found = []
        for name, path in self.sources.items():
            try:
                with open(path, "rb") as f:
                    f.seek(max(0, path.stat().st_size - self.TAIL_BYTES))
                    text = f.read().decode("utf-8", errors="replace")
            except OSError:
                continue
            if any(e.kind == "error" for e in Classifier().feed(text.split("\n"))):
                found.append(name)
        return found

    def show_newest_error(self) -> bool:
        """Open the logs at the newest error: this tab's, else the newest tab with one; False
        when no log holds an error."""
        others = [] if self.error_count else [n for n in self.tabs_with_errors() if n != self.active]
        if not (self.error_count or others):
            return False
        if others:
            self.select_then_jump(others[-1])
        elif self.display:
            self.jump_to_newest_error()
        else:  # it has no size until the next layout
            self.query_one("#log").call_after_refresh(self.jump_to_newest_error)
        self.display = True
        return True

    def select_then_jump(self, name: str) -> None:
        """Show process `name`'s log at its newest error (the tab loads on its own message)."""
        self._jump_pending = True
        self.query_one(Tabs).active = f"log-{name}"
