"""The monitor's panels. Each draws from `RunState` (plus process and GPU usage) and nothing else.

The text of each panel is built by a plain function (`header_text`, `process_rows`,
`detail_text`, ...) that the widget only displays, so the same lines can be printed once without
a screen (nvitop style). Charts are in charts.py, the log view in logview.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.text import Text
from textual.widgets import DataTable, Static

from .gpustats import GpuUsage
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


def gib(nbytes: int | None) -> str:
    return "—" if nbytes is None else f"{nbytes / 2**30:.1f} GiB"


@dataclass
class HeaderInfo:
    """What the header needs beyond the events: the monitor's own view of the job."""

    state: str
    started_fingerprint: str
    now_fingerprint: str | None = None  # set once watched sources differ from the started code
    read_only: bool = False
    versus: str | None = None  # --compare: "−2.1 pts vs REF @240k"


def header_text(run: RunState, info: HeaderInfo, now: float) -> Text:
    # The state comes first and a long data path is shortened: a narrow terminal cuts the tail.
    cfg = run.config
    data = str(cfg.get("train_url") or cfg.get("data") or "—")
    if len(data) > 40:
        data = "…" + data[-39:]
    workers = run.workers_expected if run.workers_expected is not None else cfg.get("workers", "—")
    # Elapsed time and workers before the run id: an 80-column terminal keeps all four.
    text = Text.assemble(
        (" adt ", "bold reverse"), " ",
        (f" {info.state.upper()} ", STATE_STYLES.get(info.state, "bold")), " ",
        clock(run.elapsed(now)), "  ", ("workers ", "dim"), str(workers), "  ",
    )
    if info.versus:  # before the run id: where this run stands matters more than its name
        text.append_text(Text.assemble((info.versus, "bold magenta"), "  "))
    text.append_text(Text.assemble(
        ("run ", "dim"), (run.run_id or "—", "bold"), "  ",
        ("code ", "dim"), info.started_fingerprint or "—",
    ))
    if info.now_fingerprint and info.now_fingerprint != info.started_fingerprint:
        text.append_text(Text.assemble((" → now ", "yellow"), (info.now_fingerprint, "bold yellow")))
    text.append_text(Text.assemble(
        "  ", ("model ", "dim"), run.model or cfg.get("model", "—"), "  ",
        ("data ", "dim"), data,
    ))
    if info.read_only:
        text.append("  read-only", "dim")
    return text


def usage_text(usage: Usage | None, gpu: GpuUsage | None) -> Text:
    text = Text.assemble(("cpu ", "dim"), fmt(usage.cpu_percent if usage else None, ".0f")
                         + ("%" if usage else ""), "  ", ("rss ", "dim"),
                         mib(usage.rss_bytes if usage else None))
    if gpu is not None:
        text.append_text(Text.assemble(
            "\n", ("gpu ", "dim"), str(gpu.index), "  ", gib(gpu.memory_bytes), "  ",
            fmt(gpu.utilization, ".0f") + "% util",
            (" (whole device: NVML cannot see this process)" if gpu.device_wide else "", "dim")))
    return text


# Short lines: the same text fills the detail pane (about 50 columns) and the detail screen.
def epoch_cell(index: int | None, total: object) -> str:
    """An epoch as people and the headless lines count it, 1-based out of the run's total: the
    PS's count of finished epochs (3 after a 3-epoch run) and a worker's index of the epoch it is
    in (2 in its last) both show "3/3" at the end."""
    if index is None:
        return "-"
    total = total if isinstance(total, int) and total > 0 else None
    shown = index + 1 if total is None else min(index + 1, total)
    return f"{shown}/{total}" if total else str(shown)


def worker_text(w: WorkerState, usage: Usage | None, gpu: GpuUsage | None = None,
                epochs: object = None) -> Text:
    """Everything known about one worker, for the detail pane."""
    status_style = "green" if w.status == "running" else "red" if w.exit_code else "yellow"
    timing = "  ".join(f"{k.replace('_', '/')} {fmt(v, '.1f')}" for k, v in w.timing.items())
    return Text.assemble(
        (f"worker {w.worker}", "bold"), "  ", (w.status, f"bold {status_style}"),
        ("" if not w.exit_reason else f" ({w.exit_reason})", "dim"), "\n",
        ("pid ", "dim"), fmt(w.pid, "d"), "  ", ("host ", "dim"), w.host or "—",
        "  ", ("device ", "dim"), w.device or "—", "\n",
        ("epoch ", "dim"), epoch_cell(w.epoch, epochs), "  ", ("step ", "dim"), fmt(w.step, "d"),
        "  ", ("samples ", "dim"), fmt(w.samples, ",d"), "\n",
        (fmt(w.images_per_s, ".1f"), "bold"), (" img/s", "dim"),
        "  ", ("staleness ", "dim"), fmt(w.staleness, "d"), "\n",
        ("loss ", "dim"), (fmt(w.loss, ".4f"), "bold"), "  ", ("acc ", "dim"), (pct(w.acc), "bold"),
        (" (last interval)", "dim"), "\n",
        ("step ms ", "dim"), timing or "—", "\n",
        usage_text(usage, gpu), "\n",
        ("code ", "dim"), w.code_fingerprint or "—",
    )


def server_text(run: RunState, s: ServerState, usage: Usage | None,
                gpu: GpuUsage | None = None) -> Text:
    """Everything known about the parameter server (or the single process), for the detail pane."""
    v = run.validation
    last = run.checkpoints[-1] if run.checkpoints else None
    name = "single process" if s.role == "single" else "parameter server"
    return Text.assemble(
        (name, "bold"), "  ", (s.status, "bold green" if s.status == "running" else "bold yellow"),
        "\n",
        ("pid ", "dim"), fmt(s.pid, "d"), "  ", ("live workers ", "dim"), fmt(s.live_workers, "d"), "\n",
        ("version ", "dim"), (fmt(s.version, "d"), "bold"), "  ", ("epoch ", "dim"), epoch_cell(s.epoch, run.config.get("epochs")),
        "  ", ("samples ", "dim"), fmt(s.samples_seen, ",d"), "\n",
        (fmt(s.updates_per_s, ".1f"), "bold"), (" updates/s", "dim"),
        "  ", ("apply ", "dim"), fmt(s.apply_ms, ".2f"), (" ms", "dim"),
        "  ", ("lr ", "dim"), fmt(s.lr, ".3g"), "\n",
        ("staleness ", "dim"), f"p50 {fmt(s.staleness_p50, 'g')}  p95 {fmt(s.staleness_p95, 'g')}  "
                               f"max {fmt(s.staleness_max, 'g')}",
        "  ", ("dropped ", "dim"), fmt(s.dropped, "d"), "\n",
        ("val ", "dim"),
        ("loss " + fmt(v.loss if v else None, ".4f") + "  acc " + pct(v.acc if v else None), "bold"),
        ("" if v is None or v.chance is None else f"  chance {pct(v.chance)}", "dim"), "\n",
        ("best acc ", "dim"), pct(run.best_val_acc), "  ", ("checkpoints ", "dim"), str(len(run.checkpoints)),
        ("" if last is None else f", newest v{fmt(last.version, 'd')}", "dim"), "\n",
        usage_text(usage, gpu),
        ("" if last is None else f"\n{last.path}", "dim"),
    )


# --- the process table ----------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    key: str
    label: str
    wide_only: bool = False  # left out on a narrow screen
    gpu: bool = False  # shown only while some process uses a GPU


COLUMNS: tuple[Column, ...] = (
    Column("process", "process"), Column("state", "state"), Column("pid", "pid", wide_only=True),
    Column("epoch", "epoch", wide_only=True), Column("progress", "progress"), Column("rate", "rate"),
    Column("staleness", "staleness"), Column("loss", "loss"), Column("acc", "acc"),
    Column("cpu", "cpu"), Column("rss", "rss", wide_only=True),
    Column("gpu", "gpu", gpu=True), Column("gpu_mem", "gpu mem", gpu=True),
    Column("gpu_util", "gpu util", gpu=True),
)
NUMERIC = {"pid", "epoch", "progress", "rate", "staleness", "loss", "acc", "cpu", "rss",
           "gpu", "gpu_mem", "gpu_util"}


def columns(narrow: bool, gpu: bool) -> list[Column]:
    return [c for c in COLUMNS if not (c.wide_only and narrow) and (gpu or not c.gpu)]


def _state(status: str, exit_code: int | None) -> Text:
    style = "green" if status == "running" else "red" if exit_code else "yellow"
    return Text(status, style=style)


def _gpu_cells(gpu: GpuUsage | None) -> dict[str, str]:
    if gpu is None:
        return {"gpu": "—", "gpu_mem": "—", "gpu_util": "—"}
    star = "*" if gpu.device_wide else ""  # device numbers: NVML could not see the process
    return {"gpu": f"{gpu.index}{star}", "gpu_mem": gib(gpu.memory_bytes),
            "gpu_util": fmt(gpu.utilization, ".0f") + "%"}


def _usage_cells(usage: Usage | None) -> dict[str, str]:
    return {"cpu": fmt(usage.cpu_percent if usage else None, ".0f") + ("%" if usage else ""),
            "rss": mib(usage.rss_bytes if usage else None)}


def process_rows(run: RunState, usage: dict[int, Usage],
                 gpus: dict[int, GpuUsage]) -> dict[str, dict[str, str | Text]]:
    """One row per process, server first: key -> column key -> cell."""
    s = run.server
    v = run.validation
    epochs = run.config.get("epochs")
    rows: dict[str, dict[str, str | Text]] = {"ps": {
        "process": Text("single" if s.role == "single" else "server", style="bold"),
        "state": _state(s.status, s.exit_code), "pid": fmt(s.pid, "d"), "epoch": epoch_cell(s.epoch, epochs),
        "progress": f"v{fmt(s.version, 'd')}", "rate": f"{fmt(s.updates_per_s, '.1f')} upd/s",
        "staleness": f"{fmt(s.staleness_p50, 'g')} / {fmt(s.staleness_max, 'g')}",
        "loss": fmt(v.loss if v else None, ".3f") + " val", "acc": pct(v.acc if v else None) + " val",
        **_usage_cells(usage.get(s.pid or -1)), **_gpu_cells(gpus.get(s.pid or -1)),
    }}
    for index in sorted(run.workers):
        w = run.workers[index]
        rows[f"w{index}"] = {
            "process": Text(f"worker {index}", style="bold"), "state": _state(w.status, w.exit_code),
            "pid": fmt(w.pid, "d"), "epoch": epoch_cell(w.epoch, epochs), "progress": f"step {fmt(w.step, 'd')}",
            "rate": f"{fmt(w.images_per_s, '.0f')} img/s", "staleness": fmt(w.staleness, "d"),
            "loss": fmt(w.loss, ".3f"), "acc": pct(w.acc),
            **_usage_cells(usage.get(w.pid or -1)), **_gpu_cells(gpus.get(w.pid or -1)),
        }
    return rows


class ProcessTable(DataTable):
    """One line per process; the highlighted row is the one the detail pane shows, enter opens it."""

    def __init__(self) -> None:
        super().__init__(id="procs", cursor_type="row", zebra_stripes=False, show_cursor=True)
        self._columns: list[Column] = []

    def show(self, rows: dict[str, dict[str, str | Text]], narrow: bool, gpu: bool) -> None:
        cols = columns(narrow, gpu)
        if cols != self._columns or list(rows) != [k.value for k in self.rows]:
            keep = self.cursor_row
            self.clear(columns=cols != self._columns)
            if cols != self._columns:
                for c in cols:
                    self.add_column(Text(c.label, justify="right" if c.key in NUMERIC else "left"),
                                    key=c.key)
                self._columns = cols
            for key, cells in rows.items():
                self.add_row(*(_cell(c, cells) for c in cols), key=key)
            self.move_cursor(row=min(keep, len(rows) - 1))
            return
        for key, cells in rows.items():
            for c in cols:
                self.update_cell(key, c.key, _cell(c, cells), update_width=True)

    @property
    def selected(self) -> str | None:
        """The highlighted row's key ("ps" or "w<index>")."""
        if not self.row_count:
            return None
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value


def _cell(column: Column, cells: dict[str, str | Text]) -> str | Text:
    value = cells.get(column.key, "")
    if column.key in NUMERIC and isinstance(value, str):
        return Text(value, justify="right")
    return value


def alert_lines(stale_paths: list[str], alerts: list[Alert], limit: int = 3,
                hint: str = "Press r to restart with the current code.", lost: str | None = None) -> Text:
    """The stale-code warning first (it persists), then how to bring back a lost worker, then the
    newest alerts."""
    text = Text()
    if stale_paths:
        names = ", ".join(stale_paths[:4]) + (f" (+{len(stale_paths) - 4} more)" if len(stale_paths) > 4 else "")
        text.append(" STALE CODE ", "bold black on yellow")
        text.append(f" changed since the job started: {names}. {hint}", "yellow")
    if lost:
        if text:
            text.append("\n")
        text.append(" WORKER LOST ", "bold white on red")
        text.append(f" {lost}", "red")
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

    def show(self, stale_paths: list[str], alerts: list[Alert], hint: str, limit: int = 3,
             lost: str | None = None) -> None:
        text = alert_lines(stale_paths, alerts, limit=limit, hint=hint, lost=lost)
        if text == self._shown:
            return  # a new layout is costly and this bar changes rarely
        self._shown = text
        self.display = bool(text)
        self.update(text)


class DetailPanel(Static):
    """The highlighted process in full: identity, progress, timing, usage."""

    _shown: Text | None = None

    def show(self, text: Text) -> None:
        if text != self._shown:
            self._shown = text
            self.update(text)


def detail_text(run: RunState, key: str | None, usage: dict[int, Usage],
                gpus: dict[int, GpuUsage]) -> Text:
    """The detail of table row `key` ("ps" or "w<index>"); the server when nothing is chosen."""
    if key and key.startswith("w") and int(key[1:]) in run.workers:
        w = run.workers[int(key[1:])]
        return worker_text(w, usage.get(w.pid or -1), gpus.get(w.pid or -1), run.config.get("epochs"))
    s = run.server
    return server_text(run, s, usage.get(s.pid or -1), gpus.get(s.pid or -1))
