"""The monitor's panels. Each draws from `RunState` (plus process usage) and nothing else.

The text of each panel is built by a plain function (`header_text`, `worker_text`, ...) that the
widget only displays, so the same lines can be printed once without a screen (nvitop style).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, Log, Sparkline, Static, Tab, Tabs

from .procstats import Usage
from .state import Alert, RunState, ServerState, WorkerState

STATE_STYLES = {
    "starting": "bold cyan", "running": "bold green", "stale code": "bold black on yellow",
    "stopping": "bold yellow", "finished": "bold green", "stopped": "bold yellow",
    "failed": "bold white on red", "diverged": "bold white on red", "exited": "bold yellow",
}


def fmt(value: float | None, spec: str = ".4g", none: str = "—") -> str:
    """A number for a panel; '—' when unknown, 'nan'/'inf' as they are."""
    if value is None:
        return none
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def pct(value: float | None) -> str:
    return "—" if value is None else fmt(100 * value, ".1f") + "%"


def clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def mib(nbytes: int | None) -> str:
    return "—" if nbytes is None else f"{nbytes / 2**20:.0f} MiB"


def finite(values: object) -> list[float]:
    """Sparklines cannot draw NaN/inf: leave those points out (the numbers above still show them)."""
    return [v for v in values if isinstance(v, float) and math.isfinite(v)]  # type: ignore[attr-defined]


@dataclass
class HeaderInfo:
    """What the header needs beyond the events: the monitor's own view of the job."""

    state: str
    started_fingerprint: str
    now_fingerprint: str | None = None  # set once watched sources differ from the started code
    read_only: bool = False


def header_text(run: RunState, info: HeaderInfo, now: float) -> Text:
    # The state comes first and a long data path is shortened: a narrow terminal cuts the tail.
    cfg = run.config
    data = str(cfg.get("train_url") or cfg.get("data") or "—")
    if len(data) > 40:
        data = "…" + data[-39:]
    workers = run.workers_expected if run.workers_expected is not None else cfg.get("workers", "—")
    text = Text.assemble(
        (" adt ", "bold reverse"), " ",
        (f" {info.state.upper()} ", STATE_STYLES.get(info.state, "bold")), "  ",
        ("run ", "dim"), (run.run_id or "—", "bold"), "  ",
        ("code ", "dim"), info.started_fingerprint or "—",
    )
    if info.now_fingerprint and info.now_fingerprint != info.started_fingerprint:
        text.append_text(Text.assemble((" → now ", "yellow"), (info.now_fingerprint, "bold yellow")))
    text.append_text(Text.assemble(
        "  ", ("model ", "dim"), run.model or cfg.get("model", "—"), "  ",
        ("data ", "dim"), data, "  ",
        ("workers ", "dim"), str(workers), "  ",
        ("elapsed ", "dim"), clock(run.elapsed(now)),
    ))
    if info.read_only:
        text.append("  read-only", "dim")
    return text


def worker_text(w: WorkerState, usage: Usage | None) -> Text:
    status_style = "green" if w.status == "running" else "red" if w.exit_code else "yellow"
    return Text.assemble(
        (w.status, f"bold {status_style}"), "  ", ("pid ", "dim"), fmt(w.pid, "d"),
        "  ", ("cpu ", "dim"), fmt(usage.cpu_percent if usage else None, ".0f") + ("%" if usage else ""),
        "  ", ("rss ", "dim"), mib(usage.rss_bytes if usage else None), "\n",
        ("epoch ", "dim"), fmt(w.epoch, "d"), "  ", ("step ", "dim"), fmt(w.step, "d"),
        "  ", ("img/s ", "dim"), fmt(w.images_per_s, ".1f"),
        "  ", ("staleness ", "dim"), fmt(w.staleness, "d"), "\n",
        ("loss ", "dim"), (fmt(w.loss, ".4f"), "bold"), "  ", ("acc ", "dim"), (pct(w.acc), "bold"),
    )


def server_text(run: RunState, s: ServerState, usage: Usage | None) -> Text:
    v = run.validation
    last = run.checkpoints[-1] if run.checkpoints else None
    text = Text.assemble(
        (s.status, "bold green" if s.status == "running" else "bold yellow"), "  ",
        ("pid ", "dim"), fmt(s.pid, "d"),
        "  ", ("cpu ", "dim"), fmt(usage.cpu_percent if usage else None, ".0f") + ("%" if usage else ""),
        "  ", ("rss ", "dim"), mib(usage.rss_bytes if usage else None), "\n",
        ("version ", "dim"), (fmt(s.version, "d"), "bold"), "  ", ("epoch ", "dim"), fmt(s.epoch, "d"),
        "  ", ("updates/s ", "dim"), fmt(s.updates_per_s, ".1f"), "  ", ("lr ", "dim"), fmt(s.lr, ".3g"),
        "\n",
        ("staleness ", "dim"), f"p50 {fmt(s.staleness_p50, 'g')}  p95 {fmt(s.staleness_p95, 'g')}  "
                               f"max {fmt(s.staleness_max, 'g')}",
        "  ", ("dropped ", "dim"), fmt(s.dropped, "d"), "\n",
        ("val ", "dim"),
        ("loss " + fmt(v.loss if v else None, ".4f") + "  acc " + pct(v.acc if v else None), "bold"),
        ("" if v is None or v.chance is None else f"  chance {pct(v.chance)}", "dim"), "\n",
        ("checkpoints ", "dim"), str(len(run.checkpoints)),
        ("" if last is None else f" (newest @ v{fmt(last.version, 'd')})", "dim"),
        "  ", ("best acc ", "dim"), pct(run.best_val_acc),
    )
    return text


def alert_lines(stale_paths: list[str], alerts: list[Alert], limit: int = 3,
                hint: str = "Press r to restart with the current code.") -> Text:
    """The stale-code warning first (it persists), then the newest alerts."""
    text = Text()
    if stale_paths:
        names = ", ".join(stale_paths[:4]) + (f" (+{len(stale_paths) - 4} more)" if len(stale_paths) > 4 else "")
        text.append(" STALE CODE ", "bold black on yellow")
        text.append(f" changed since the job started: {names}. {hint}", "yellow")
    for alert in alerts[-limit:]:
        if text:
            text.append("\n")
        style = "bold white on red" if alert.level == "error" else "bold black on yellow"
        text.append(f" {alert.level.upper()} ", style)
        text.append(f" {alert.message}", "red" if alert.level == "error" else "yellow")
    return text


class RunHeader(Static):
    """Run id, model, data, workers, elapsed, code fingerprint and the job's state."""

    def show(self, text: Text) -> None:
        self.update(text, layout=False)  # one line, always: no new layout needed


class AlertBar(Static):
    """Stale code and the newest alerts; hidden while there is nothing to say."""

    _shown: Text | None = None

    def show(self, stale_paths: list[str], alerts: list[Alert], hint: str) -> None:
        text = alert_lines(stale_paths, alerts, hint=hint)
        if text == self._shown:
            return  # a new layout is costly and this bar changes rarely
        self._shown = text
        self.display = bool(text)
        self.update(text)


class Curve(Horizontal):
    """A labelled sparkline."""

    def __init__(self, label: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.label = label

    def compose(self) -> ComposeResult:
        yield Label(self.label, classes="curve-label")
        yield Sparkline([])

    def set(self, values: object) -> None:
        self.query_one(Sparkline).data = finite(values)


class WorkerPanel(Vertical, can_focus=True):
    """One worker: its numbers and its loss/accuracy curves; stays after the worker exits."""

    def __init__(self, index: int) -> None:
        super().__init__(id=f"worker-{index}", classes="panel")
        self.index = index
        self.border_title = f"worker {index}"
        self._latest: tuple[WorkerState, Usage | None] | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="numbers")
        yield Curve("loss", classes="loss")
        yield Curve("acc ", classes="acc")

    def on_mount(self) -> None:
        # Numbers may have arrived while the panel was being mounted; its parts exist after a refresh.
        self.call_after_refresh(self._draw_latest)

    def _draw_latest(self) -> None:
        if self._latest is not None:
            self.show(*self._latest)

    def show(self, w: WorkerState, usage: Usage | None) -> None:
        self._latest = (w, usage)
        if not self.is_mounted:
            return
        self.query_one("#numbers", Static).update(worker_text(w, usage), layout=False)
        self.query_one(".loss", Curve).set(w.loss_history)
        self.query_one(".acc", Curve).set(w.acc_history)
        self.set_class(w.exited, "exited")
        self.border_subtitle = w.status


class ServerPanel(Vertical, can_focus=True):
    """The parameter server (or the single process): versions, staleness, validation, checkpoints."""

    def __init__(self) -> None:
        super().__init__(id="server", classes="panel")
        self.border_title = "parameter server"

    def compose(self) -> ComposeResult:
        yield Static(id="numbers")
        yield Curve("val acc", classes="val")

    def show(self, run: RunState, usage: Usage | None) -> None:
        s = run.server
        self.border_title = "single process" if s.role == "single" else "parameter server"
        self.query_one("#numbers", Static).update(server_text(run, s, usage), layout=False)
        self.query_one(".val", Curve).set([v.acc for v in run.validations])
        self.set_class(s.exited, "exited")
        self.border_subtitle = s.status


class LogView(Vertical):
    """The tail of one process's log (runs/<id>/logs/<name>.log); tabs switch the process."""

    TAIL_BYTES = 32 * 1024  # what a newly chosen log shows of its past

    def __init__(self) -> None:
        super().__init__(id="logs")
        self.border_title = "logs"
        self.sources: dict[str, Path] = {}
        self._offset = 0

    def compose(self) -> ComposeResult:
        yield Tabs(id="log-tabs")
        yield Log(max_lines=2000, id="log")

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
        log = self.query_one(Log)
        log.clear()
        self._offset = 0
        path = self.sources.get(self.active or "")
        if path is None:
            return
        try:
            size = path.stat().st_size
        except OSError:
            return
        self._offset = max(0, size - self.TAIL_BYTES)
        self.refresh_tail(skip_partial=self._offset > 0)

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
        text = chunk[:end].decode("utf-8", errors="replace")
        if skip_partial:  # we started mid-file: drop the cut first line
            text = text.split("\n", 1)[1] if "\n" in text else ""
        if text:
            self.query_one(Log).write(text)
