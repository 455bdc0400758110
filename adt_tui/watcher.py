"""Stale-code detection: watch source directories for Python changes, apart from any widget.

`SourceWatcher.run()` is an async loop over `watchfiles.awatch`; each debounced batch of changed
`*.py` files, and of files watched by name (a model file, the TOML config), is handed to a
callback (the app posts it as a `SourceChanged` message). Editors' atomic saves (write a temp file,
rename it over the original) arrive as an "added" or "modified" event on the real name, so they
count; the temp names (`.x.py.swp`, `x.py~`, `4913`) do not end in `.py` and are ignored. Anything
under data/, checkpoints/, runs/ or __pycache__ never counts: a running job writes there all the time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from watchfiles import Change, DefaultFilter, awatch

IGNORED_DIRS = ("data", "checkpoints", "runs", "__pycache__")
# watchfiles waits this long for a burst of writes to end; with polling steps of 50 ms a save is
# reported well within the promised second.
DEBOUNCE_MS = 200
STEP_MS = 50


class SourceFilter(DefaultFilter):
    """Only `*.py` files, never below an ignored directory of a watched root; and `files`, whatever
    their kind (adt.toml)."""

    def __init__(self, roots: Iterable[Path], files: Iterable[Path] = ()) -> None:
        super().__init__()  # its ignore list (__pycache__, .git, ...) checks every path component
        self.roots = [r.resolve() for r in roots]
        self.files = {str(f.resolve()) for f in files}

    def __call__(self, change: Change, path: str) -> bool:
        if path in self.files:
            return True
        if not path.endswith(".py") or not super().__call__(change, path):
            return False
        p = Path(path)
        for root in self.roots:
            # Only the part below a watched root: a root that itself lives in /tmp/data/... counts.
            if p.is_relative_to(root) and any(
                part in IGNORED_DIRS for part in p.relative_to(root).parts[:-1]
            ):
                return False
        return True

    def __repr__(self) -> str:  # DefaultFilter's repr lists every regex; keep logs short
        return f"SourceFilter({self.roots})"


def watch_roots(paths: Iterable[str | Path]) -> list[Path]:
    """The existing directories to watch (a file is watched through its directory)."""
    roots: list[Path] = []
    for path in paths:
        p = Path(path).resolve()
        root = p if p.is_dir() else p.parent
        if root.exists() and root not in roots:
            roots.append(root)
    return roots


class SourceWatcher:
    """Watches `paths` until `stop()`; calls `on_change(sorted paths, monotonic time)` per batch."""

    def __init__(self, paths: Iterable[str | Path],
                 on_change: Callable[[tuple[str, ...], float], None]) -> None:
        self.paths = [Path(p).resolve() for p in paths]
        self.roots = watch_roots(self.paths)
        self.on_change = on_change
        self._stop = asyncio.Event()
        self.filter = SourceFilter(self.roots, [p for p in self.paths if not p.is_dir()])

    def wanted(self, path: str) -> bool:
        """A file given explicitly with --watch counts only itself, not its neighbours."""
        p = Path(path)
        return any(p == w or p.is_relative_to(w) for w in self.paths)

    async def run(self) -> None:
        if not self.roots:
            return
        async for changes in awatch(*self.roots, watch_filter=self.filter, debounce=DEBOUNCE_MS,
                                    step=STEP_MS, stop_event=self._stop):
            paths = tuple(sorted({path for _, path in changes if self.wanted(path)}))
            if paths:
                self.on_change(paths, time.monotonic())

    def stop(self) -> None:
        self._stop.set()
