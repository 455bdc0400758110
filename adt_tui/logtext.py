"""What a log line is: an error (tracebacks whole), a warning, known third-party noise, or plain.

Pure text rules, no widgets, so they are easy to test and to extend: add a `Noise` to `NOISE`
when a library prints something harmless on every run. Noise is only collapsed on screen; the
log files under runs/<id>/logs/ keep every byte.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from rich.text import Text


@dataclass(frozen=True)
class Noise:
    name: str  # what the collapsed line says it hid
    pattern: re.Pattern[str]
    follow: int = 0  # indented lines that belong to it (a Python warning shows its source line)


NOISE: tuple[Noise, ...] = (
    # torch.distributed warns once per process that RPC's Gloo group is used as a ProcessGroup.
    Noise("torch UserWarning (Gloo backend used as a ProcessGroup)",
          re.compile(r"distributed_c10d\.py:\d+: UserWarning: You are using a Backend"), follow=1),
    # TensorPipe logs every peer's orderly close at shutdown as a read error.
    Noise("tensorpipe: a peer closed its connection",
          re.compile(r"tensorpipe_agent\.cpp:\d+\] RPC agent for \S+ encountered error when reading "
                     r"incoming request from \S+: (pipe closed|eof)")),
    # torch and torchvision deprecations that name no adt code.
    Noise("torch deprecation warning",
          re.compile(r"site-packages/torch\w*/.*: (UserWarning|FutureWarning|DeprecationWarning): "
                     r".*(deprecated|will be removed)"), follow=1),
)

ERROR = re.compile(r"^\[[EF]\d{4}|\b(ERROR|FATAL|CRITICAL)\b|^\w*(Error|Exception)\b.*:|"
                   r"\bKilled\b|lost the parameter server|Segmentation fault")
WARNING = re.compile(r"^\[W\d{4}|\bWARNING\b|\w+Warning:")
TRACEBACK = "Traceback (most recent call last):"


@dataclass(frozen=True)
class Entry:
    kind: str  # "error", "warning", "noise" or "plain"
    text: str
    noise: str = ""  # the Noise name, for kind "noise"


class Classifier:
    """Classifies lines in order; keeps its place across chunks (a traceback may be split)."""

    def __init__(self) -> None:
        self._in_traceback = False
        self._follow: tuple[str, int] | None = None  # (noise name, lines still belonging to it)

    def feed(self, lines: Iterable[str]) -> Iterator[Entry]:
        for line in lines:
            yield self._one(line)

    def _one(self, line: str) -> Entry:
        if self._follow and self._follow[1] > 0 and line[:1].isspace():
            name, left = self._follow
            self._follow = (name, left - 1)
            return Entry("noise", line, name)
        self._follow = None
        if self._in_traceback:
            # Frames are indented; the exception line is not, and closes the traceback.
            if line[:1].isspace() or line.startswith(("During handling", "The above exception")) or not line:
                return Entry("error", line)
            self._in_traceback = False
            return Entry("error", line)
        if line.startswith(TRACEBACK):
            self._in_traceback = True
            return Entry("error", line)
        for noise in NOISE:
            if noise.pattern.search(line):
                self._follow = (noise.name, noise.follow)
                return Entry("noise", line, noise.name)
        if ERROR.search(line):
            return Entry("error", line)
        if WARNING.search(line):
            return Entry("warning", line)
        return Entry("plain", line)


def collapse(entries: Iterable[Entry], show_noise: bool) -> Iterator[tuple[Text, bool]]:
    """Renderable lines, with each run of noise folded into one dim line (unless `show_noise`);
    the flag says the line is an error, for the jump to the newest one."""
    hidden: list[Entry] = []

    def folded() -> Text:
        names = sorted({e.noise for e in hidden})
        text = Text(f"  ⋯ {len(hidden)} line{'s' if len(hidden) > 1 else ''} of known noise: "
                    f"{'; '.join(names)} (n shows; the log file keeps them)", style="dim italic")
        hidden.clear()
        return text

    for entry in entries:
        if entry.kind == "noise" and not show_noise:
            hidden.append(entry)
            continue
        if hidden:
            yield folded(), False
        yield styled(entry), entry.kind == "error"
    if hidden:
        yield folded(), False


def styled(entry: Entry) -> Text:
    style = {"error": "bold red", "warning": "yellow", "noise": "dim"}.get(entry.kind, "")
    return Text(entry.text, style=style, no_wrap=True)
