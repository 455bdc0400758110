"""The adt monitor: runs a job (or watches one), shows every process live, catches stale code.

Data flows one way: the supervisor starts processes; they write runs/<id>/events.jsonl; a timer
tails that file into a `RunState` (adt_tui/state.py) and redraws the panels from it at most
`TICK` times a second, and each chart at most once a second (`CHART_EVERY`), however fast
events arrive. Stops run in a thread so the screen never freezes for a grace period. Source watching
lives in adt_tui/watcher.py.

The layout follows the terminal: `-narrow` (under NARROW columns: one chart at a time, `c` picks
it) and `-short` (under SHORT rows: no small charts, no detail pane, logs hidden until `l`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import ClassVar

from textual import events, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid
from textual.widgets import DataTable, Footer

from engine.config import ConfigError, RunConfig
from engine.events import AlertCode
from engine.fingerprint import PROJECT_ROOT, SOURCE_DIRS, source_hash
from engine.rundir import RunDir

from .charts import AXES, CHARTS, Chart, chart_spec
from .compare import Comparison, Reference
from .controller import BringBack, JobController, Quit, Restart, Then
from .feed import RunFeed
from .gpustats import GpuStats, GpuUsage
from .logview import LogView
from .messages import JobStopped, SourceChanged
from .panels import (
    AlertBar,
    DetailPanel,
    HeaderInfo,
    ProcessTable,
    RunHeader,
    detail_text,
    header_text,
    process_rows,
)
from .procstats import ProcStats, Usage
from .screens import (
    ChoiceScreen,
    DetailScreen,
    HelpScreen,
    quit_question,
    restart_question,
    stop_question,
)
from .stale import StaleCode, StartedSources
from .state import RunState
from .supervisor import Child, Supervisor
from .watcher import SourceWatcher

TICK = 0.25  # seconds between redraws: fast enough to feel live, slow enough to stay cheap
INGEST_BUDGET = 0.03  # seconds of event parsing per slice, so a backlog never freezes the screen
STATS_EVERY = 1.0  # psutil sampling interval (cpu_percent needs a span to measure over)
# Seconds between redraws of one chart (a plot costs tens of ms, a table update almost nothing):
# the big charts, the small ones, and any while reading a backlog (each redraw stalls the screen).
CHART_EVERY = {"loss": 1.0, "acc": 1.0, "lr": 2.0, "staleness": 2.0}
CHART_EVERY_CATCHING_UP = 2.0
NARROW = 110  # columns under which one chart shows at a time
SHORT = 36  # rows under which the small charts, the detail pane and the logs step aside


def default_source_dirs() -> list[Path]:
    """engine/ and adt_tui/ of this checkout: the code a job imports."""
    return [PROJECT_ROOT / d for d in SOURCE_DIRS]


def fingerprint(paths: Sequence[Path]) -> str:
    """The same hash the engine records (engine/fingerprint.py), over the watched paths."""
    return source_hash(paths)


class AdtApp(App[int]):
    """Owns a job (`config=`) or watches one (`run_dir=`); exits with the run's exit code."""

    CSS_PATH = "app.tcss"
    TITLE = "adt"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "restart", "Restart", tooltip="Restart the job with the current code "
                "(asks: resume from the last checkpoint or start fresh)"),
        Binding("s", "stop", "Stop", tooltip="Stop the job: graceful (final checkpoint), then "
                "forced after the grace period; the monitor stays open"),
        Binding("b", "bring_back", "Bring back", tooltip="A worker died: checkpoint now and "
                "restart the job from there, so it trains again (automatic with --max-restarts)"),
        # Help and Quit before the view keys: a narrow footer cuts from the end.
        Binding("question_mark", "help", "Help", key_display="?", tooltip="This help"),
        Binding("q", "quit_monitor", "Quit", tooltip="Quit; asks whether to stop a running job "
                "or leave it running in the background"),
        Binding("l", "toggle_log", "Logs", tooltip="Show or hide the log view (tabs pick the process)"),
        Binding("c", "next_chart", "Chart", tooltip="Show the next chart (loss, accuracy, learning "
                "rate, staleness) when the screen fits only one"),
        Binding("x", "toggle_axis", "Samples/time", tooltip="Charts' x axis: samples seen or wall time"),
        Binding("e", "newest_error", "Newest error", tooltip="Show the logs at the newest error "
                "(switches to a process whose log has one)"),
        Binding("n", "toggle_noise", "Noise", show=False, tooltip="Show or fold known third-party "
                "noise in the logs (the log files always keep it)"),
        Binding("enter", "detail", "Detail", show=False, tooltip="The highlighted process in detail "
                "(also a click on its row)"),
        Binding("p", "screenshot_svg", "Screenshot", show=False,
                tooltip="Save the screen as SVG in the run directory"),
        Binding("tab", "focus_next", "Next panel", show=False,
                tooltip="Move to the next panel (process table, log tabs, log)"),
        Binding("shift+tab", "focus_previous", "Previous panel", show=False,
                tooltip="Move to the previous panel; ↑ ↓ pick a process in the table"),
        Binding("ctrl+q", "quit_monitor", "Quit", show=False, tooltip="Same as q"),
        # Textual's own ctrl+c only says "press ctrl+q": a terminal user means quit.
        Binding("ctrl+c", "quit_monitor", "Quit", show=False, priority=True, tooltip="Same as q"),
    ]

    def __init__(self, config: RunConfig | None = None, *, run_dir: str | Path | None = None,
                 source_dirs: Iterable[str | Path] | None = None,
                 restart_on_change: bool = False, clock: Callable[[], float] = time.time,
                 python: str | None = None, gpu: GpuStats | None = None,
                 comparison: Comparison | None = None) -> None:
        """Give `config` to start and own a job, or `run_dir` to watch an existing one.

        `source_dirs` replaces adt's own source directories among the watched paths (tests watch a
        temp dir; the job's model, config file and --watch paths join them);
        `clock` is the wall clock for elapsed time (frozen in snapshots);
        `gpu` replaces the NVML sampler (tests pass one without NVML, or a fake);
        `comparison` is --compare: a reference run drawn beside this one (without one, what one
        process reaches on this run's data and settings, when the benchmarks hold it).
        """
        super().__init__()
        if (config is None) == (run_dir is None):
            raise ValueError("pass exactly one of config (start a job) or run_dir (watch one)")
        self.config = config
        self.own_dirs = default_source_dirs() if source_dirs is None else [Path(d) for d in source_dirs]
        self.restart_on_change = restart_on_change
        self.clock = clock
        self.python = python
        self.job = (JobController.attach(run_dir, self.own_dirs) if run_dir
                    else JobController(python=python or sys.executable, source_dirs=self.own_dirs))
        self.feed: RunFeed | None = None  # the current run's events, folded (adt_tui/feed.py)
        self.stats = ProcStats()
        self.usage: dict[int, Usage] = {}
        self.gpu = gpu if gpu is not None else GpuStats()
        self.gpus: dict[int, GpuUsage] = {}
        self.axis = AXES[0]
        self.chart_index = 0  # the chart shown when the screen fits one (CHARTS)
        self.narrow = self.short = False
        self.logs_wanted: bool | None = None  # l pressed: the user's choice beats the layout's
        self._chart_turn = 0  # draw_charts takes turns over the charts
        self.stopping = False
        self.busy = False  # a stop or restart is under way: keys r/s/q wait for it
        self._stop_dialog: ChoiceScreen | None = None  # the open "Stop the job?" question
        self._lost_shown: Child | None = None  # the lost worker the footer's b was shown for
        self.detached = False  # quit while leaving the job running
        self._reported_exits: set[int] = set()
        self._alerts_seen = 0
        self._last_stats = 0.0
        self._last_draw = 0.0
        self._drawn = -1
        self._backlog = False
        self._catching_up = False
        self.watcher: SourceWatcher | None = None
        self.comparison = comparison or Comparison()  # without --compare: against one process, if known
        self._reference_read = 0.0

    # --- layout -------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        # Held, not queried: queries go to the active screen, which may be a modal.
        self.header, self.alert_bar = RunHeader(id="header"), AlertBar(id="alerts")
        self.table, self.detail, self.log_view = ProcessTable(), DetailPanel(id="detail"), LogView()
        self.charts = {name: Chart(name, id=f"chart-{name}", classes="chart") for name in CHARTS}
        yield self.header
        yield self.alert_bar
        yield self.table
        yield Grid(*self.charts.values(), self.detail, id="charts")
        yield self.log_view
        self.footer = Footer()
        yield self.footer

    def on_resize(self, event: events.Resize) -> None:
        self.layout_for(event.size.width, event.size.height)

    def layout_for(self, width: int, height: int) -> None:
        """Pick the layout for a terminal size (see the module docstring)."""
        self.narrow, self.short = width < NARROW, height < SHORT
        self.set_class(self.narrow, "-narrow")
        self.set_class(self.short, "-short")
        self.footer.compact = self.narrow  # 80 columns then keep "? Help" and "q Quit"
        self.log_view.display = (not self.short) if self.logs_wanted is None else self.logs_wanted
        self._show_current_chart()
        self.refresh_bindings()

    def _show_current_chart(self) -> None:
        for i, chart in enumerate(self.charts.values()):
            chart.set_class(i == self.chart_index, "current")

    @property
    def supervisor(self) -> Supervisor | None:
        """The current start's processes (the controller's)."""
        return self.job.supervisor

    @property
    def owned(self) -> bool:
        """True when this monitor started the job (and so may restart it)."""
        return self.job.owned

    @property
    def state(self) -> RunState:
        """What the current run's events said (nothing yet before one is open)."""
        return self.feed.state if self.feed is not None else RunState()

    @property
    def run_dir(self) -> Path | None:
        return self.job.run_dir if self.job.supervisor else None

    def on_mount(self) -> None:
        self.alert_bar.display = False
        if self.config is not None:
            try:
                self.start_job(self.config)
            except ConfigError as exc:  # --mps: the job's MPS daemon did not start
                self.exit(return_code=2, message=str(exc))
                return
        else:
            self._open_run(self.supervisor.run_dir)  # type: ignore[union-attr]
            if self.job_running():
                self._start_watcher()
        self.layout_for(*self.size)
        self.set_interval(TICK, self.tick)
        self.tick()
        self.table.focus()

    # --- the job ------------------------------------------------------------------------------
    def start_job(self, config: RunConfig) -> None:
        """Start a job with the current code."""
        self.config = config
        self._started(self.job.start(config))

    def _started(self, run_dir: Path) -> None:
        self.stopping = False
        self._reported_exits = set()
        if self.feed is None or self.feed.path != RunDir(run_dir).events:
            self._open_run(run_dir)
        self._start_watcher()

    @property
    def stale(self) -> StaleCode | None:
        """The job's files as it started, and what changed since (the controller's)."""
        return self.job.stale

    @property
    def sources(self) -> StartedSources | None:
        return self.job.stale.sources if self.job.stale else None

    @property
    def started_fingerprint(self) -> str:
        """The code this monitor started the job with ("" for a job it attached to)."""
        return self.job.stale.sources.fingerprint if self.owned and self.job.stale else ""

    @property
    def source_paths(self) -> list[Path]:
        """What the job depends on, watched for changes."""
        return self.sources.paths if self.sources else [p.resolve() for p in self.own_dirs]

    def _open_run(self, run_dir: Path) -> None:
        """Read a run from the start of its events (a new run, or one we attach to)."""
        if self.feed is not None:
            self.feed.close()
        self.feed = RunFeed(run_dir, self.comparison, self.config.tensorboard if self.config else "")
        self._alerts_seen, self._drawn = 0, -1
        self._catching_up = True  # the tick reads the past in slices; its alerts go to the bar only

    @property
    def job_fingerprint(self) -> str:
        """The code the job started with: computed at our launch, or as its run_start says."""
        return self.started_fingerprint or self.state.code.get("fingerprint", "")

    def job_running(self) -> bool:
        return self.job.running()

    def job_state(self) -> str:
        if self.stopping:
            return "stopping"
        if self.state.outcome:
            return self.state.outcome
        if self.supervisor and self.supervisor.children and not self.job_running():
            return "failed" if self.owned else "exited"
        if self.stale_paths:
            return "stale code"
        if self.state.server.version is not None or any(w.step for w in self.state.workers.values()):
            return "running"
        return "starting" if self.job_running() else "exited"

    # --- the timer ----------------------------------------------------------------------------
    def tick(self) -> None:
        """Poll processes, read new events, redraw what changed."""
        if not (self.is_running and self.header.is_attached):  # a late timer while closing
            return
        self.job.poll()
        # Events after exits: a process writes its last events before it exits, so reading them
        # second means a clean end (run_end) is known before its process exits are judged.
        self._backlog = self._ingest(budget=INGEST_BUDGET)
        self._note_exits()
        if self._stop_dialog is not None and not self.job_running():
            # The job ended while the question was open: its pids are gone, nothing to stop.
            dialog, self._stop_dialog = self._stop_dialog, None
            dialog.dismiss(None)
            self.notify("The job ended by itself; nothing to stop.", severity="information")
        due = self.job.restart_due() if not self.busy else None
        if due is not None:
            self._bring_back(due, automatic=True)
        now = time.monotonic()
        if now - self._reference_read >= STATS_EVERY:
            self._reference_read = now
            self._compare(self.comparison)
        if now - self._last_stats >= STATS_EVERY:
            self._last_stats = now
            self.usage = self.stats.sample(self._live_pids())
            self.gpus = self.gpu.sample({pid: u.tree for pid, u in self.usage.items()},
                                        self.state.cuda_devices())
            self._drawn = -1
        # Catching up, draw at the tick rate only: a redraw costs more than a slice of events.
        if not self._backlog or now - self._last_draw >= TICK:
            self._last_draw = now
            self.draw()
        if self._backlog:
            self.set_timer(0.001, self.tick)  # keep reading, but let the screen breathe between slices

    def _ingest(self, budget: float | None) -> bool:
        """Fold new events into the state; True when more are waiting than the budget allowed."""
        return self.feed is not None and self.feed.read(budget)

    def _note_exits(self) -> None:
        """Show process exits the instant we see them, before anyone writes them down."""
        for child in self.job.children:
            if not child.running and child.pid not in self._reported_exits:
                self._reported_exits.add(child.pid)
                self.state.apply({"v": 1, "t": self.clock(), "kind": "process_exit", "role": child.role,
                                  "worker": child.worker, "pid": child.pid, "code": child.exit_code,
                                  "reason": "seen by the monitor"})
        if self.owned and self.job.children and not self.job_running() and not self.job.finished:
            self._ingest(budget=None)
            self.job.finish(run_ended=self.state.ended)
            if not self.busy:  # no restart follows: the job is over
                self.job.release()
            self._ingest(budget=None)
            if self.watcher:
                self.watcher.stop()

    def _live_pids(self) -> list[int]:
        return [c.pid for c in self.job.children if c.running]

    # --- drawing ------------------------------------------------------------------------------
    def draw(self) -> None:
        """Redraw from the state; cheap when nothing changed (only the clock moves)."""
        info = HeaderInfo(self.job_state(), self.job_fingerprint,
                          self.stale.now if self.stale_paths else None,  # type: ignore[union-attr]
                          read_only=not self.owned,
                          versus=self.comparison.header(self.state.curves, self._started_as()))
        self.header.show(header_text(self.state, info, self.clock()))
        self.draw_charts()
        if self._drawn == self.state.events:
            return
        self._drawn = self.state.events
        hint = ("Press r to restart with the current code." if self.owned else
                "This monitor only watches: restart the job from a shell to run the new code.")
        lost = self._lost_worker()
        self.alert_bar.show(self._stale_names(), list(self.state.alerts), hint,
                            limit=1 if self.short else 3,
                            lost=None if lost is None else f"{lost.label}: press b to bring it back "
                            "(a checkpoint now, then the whole job restarts from it)")
        if (lost is None) != (self._lost_shown is None):  # b shows in the footer while one is lost
            self._lost_shown = lost
            self.refresh_bindings()
        self.table.show(process_rows(self.state, self.usage, self.gpus), self.narrow, bool(self.gpus))
        self._draw_detail()
        if self.run_dir is not None:  # every process that ever wrote a log, this run or an earlier start
            logs = {p.stem: p for p in sorted(RunDir(self.run_dir).logs.glob("*.log"))}
            logs.update({c.name: c.log_path for c in self.job.children})
            self.log_view.set_sources(logs)
        self.log_view.refresh_tail()
        if self._catching_up:
            self._catching_up = self._backlog
            self._alerts_seen = len(self.state.alerts)
        for alert in list(self.state.alerts)[self._alerts_seen:][-3:]:
            self.notify(alert.message, title=alert.code.replace("_", " "),
                        severity="error" if alert.level == "error" else "warning", timeout=8)
        self._alerts_seen = len(self.state.alerts)

    def draw_charts(self, force: bool = False) -> None:
        """Redraw charts whose curves moved, each at most every CHART_EVERY seconds, one per
        call (a plot costs tens of ms: several at once would freeze the screen); `force` (a key
        was pressed) redraws every shown chart now."""
        now = time.monotonic()
        shown = [chart for chart in self.charts.values() if chart.display]
        turn = self._chart_turn % max(1, len(shown))
        for chart in shown[turn:] + shown[:turn]:
            ghost = self.comparison.ghost(self.axis)
            key = (self.state.curves.changes, ghost[1].changes if ghost else 0, self.axis,
                   chart.size.width, chart.size.height)
            first = chart.drawn_key is None
            every = CHART_EVERY_CATCHING_UP if self._backlog else CHART_EVERY[chart.chart]
            if key == chart.drawn_key or not (force or first) and now - chart.drawn_at < every:
                continue
            target = max(64, 2 * chart.size.width)
            chart.show(chart_spec(chart.chart, self.state.curves, self.axis, target, ghost))
            chart.drawn_key, chart.drawn_at = key, now
            self._chart_turn = shown.index(chart) + 1
            if not (force or first):
                return

    def _compare(self, comparison: Comparison) -> None:
        """Read the reference again (it may still run); say once if it is not comparable, and
        each new cause of this run trailing it (an alert: the banner and a notification)."""
        comparison.refresh()
        warning = comparison.not_comparable(self._started_as())
        if warning:
            self.notify(warning, title="not comparable", severity="warning", timeout=20, markup=False)
        lag = comparison.new_lag(self.state.curves)
        if lag:
            self.state.apply({"v": 1, "t": self.clock(), "kind": "alert", "level": "warning",
                              "code": AlertCode.ASYNC_LAGS, "message": lag})

    def _started_as(self) -> dict[str, object] | None:
        """What this run's run_start said about its data (for the comparison), once it said it."""
        if not self.state.starts:
            return None
        return {"data": self.state.data, "num_classes": self.state.num_classes}

    def _draw_detail(self) -> None:
        self.detail.show(detail_text(self.state, self.table.selected, self.usage, self.gpus))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._draw_detail()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_detail()

    def _stale_names(self) -> list[str]:
        return self.stale.names() if self.stale else []

    @property
    def stale_paths(self) -> list[str]:
        return self.stale.paths if self.stale else []

    # --- stale code ---------------------------------------------------------------------------
    def _start_watcher(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        app = self
        self.watcher = SourceWatcher(self.source_paths,
                                     lambda paths, at: app.post_message(SourceChanged(paths, at)))
        # The method, not a coroutine: a worker cancelled before it starts then leaves nothing behind.
        self.run_worker(self.watcher.run, group="watch", exclusive=True, exit_on_error=False)

    def on_source_changed(self, message: SourceChanged) -> None:
        if not self.job_running() or self.stopping or self.stale is None:
            return
        first = self.stale.since is None
        if self.stale.changed(message.paths, self.job_fingerprint) and first:
            self.notify(f"changed since the job started: {', '.join(self._stale_names())}. "
                        + ("Restarting with the new code." if self.restart_on_change and self.owned
                           else "Press r to restart." if self.owned else ""),
                        title="stale code", severity="warning", timeout=10, markup=False)
        self._drawn = -1
        self.draw()
        if self.stale_paths and self.restart_on_change and self.owned and not self.busy:
            self._stop_then(Restart(resume=bool(self.state.starts)))

    # --- keys ---------------------------------------------------------------------------------
    def action_help(self) -> None:
        bindings = [b for b in self.BINDINGS if isinstance(b, Binding)]
        settings, source = self.effective_settings()
        self.push_screen(HelpScreen(bindings, {b.key: self.get_key_display(b) for b in bindings},
                                    settings, RunConfig().to_dict(), source))

    def effective_settings(self) -> tuple[dict[str, object], str]:
        """The run's resolved config and where it came from: its run_start event, else the run
        directory's config.json, else the config this monitor was given."""
        if self.state.config:
            return dict(self.state.config), f" (as run {self.state.run_id} started)"
        if self.run_dir is not None and RunDir(self.run_dir).is_run():
            try:
                return RunDir(self.run_dir).read_config(), " (config.json)"
            except (OSError, ValueError):
                pass
        return (self.config.to_dict(), "") if self.config is not None else ({}, "")

    def action_toggle_log(self) -> None:
        self.logs_wanted = self.log_view.display = not self.log_view.display

    def on_chart_resized(self, _message: Chart.Resized) -> None:
        self.draw_charts(force=True)  # at the new size now, not a rate-limited tick later

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "next_chart":
            return self.narrow  # with room for every chart there is nothing to cycle
        if action == "bring_back":  # in the footer only while there is a worker to bring back
            return self._lost_worker() is not None
        return True

    def _lost_worker(self) -> Child | None:
        return self.job.lost_worker() if not self.busy else None

    def action_next_chart(self) -> None:
        self.chart_index = (self.chart_index + 1) % len(CHARTS)
        self._show_current_chart()
        self.draw_charts(force=True)

    def action_toggle_axis(self) -> None:
        self.axis = AXES[(AXES.index(self.axis) + 1) % len(AXES)]
        self.draw_charts(force=True)

    def action_toggle_noise(self) -> None:
        self.log_view.toggle_noise()

    def action_newest_error(self) -> None:
        if self.log_view.show_newest_error():
            self.logs_wanted = True
        else:
            self.notify("No errors in the logs.", severity="information")

    def action_detail(self) -> None:
        self.push_screen(DetailScreen(detail_text(self.state, self.table.selected, self.usage,
                                                  self.gpus)))

    def action_screenshot_svg(self) -> None:
        where = self.run_dir or Path.cwd()
        name = f"screen-{time.strftime('%Y%m%d-%H%M%S')}.svg"
        path = self.save_screenshot(name, str(where))
        self.notify(f"saved {path}", title="screenshot", timeout=6)

    def action_stop(self) -> None:
        if self.busy or not self.job_running():
            self.notify("The job is not running.", severity="information")
            return
        sup = self.supervisor
        assert sup is not None

        def answered(choice: str | None) -> None:
            self._stop_dialog = None
            if choice == "yes" and self.job_running():
                self._stop_then(None)

        self._stop_dialog = stop_question(sup.run_id, self._live_pids(), sup.config.grace_period, self.owned)
        self.push_screen(self._stop_dialog, answered)

    def action_restart(self) -> None:
        if not self.owned:
            self.notify("Watching read-only: this monitor did not start the job, so it cannot "
                        "restart it.", severity="warning")
            return
        if self.busy:
            return

        def answered(choice: str | None) -> None:
            if choice in ("resume", "fresh"):
                self._stop_then(Restart(resume=choice == "resume"))

        self.push_screen(restart_question(self.job_running(), bool(self.state.checkpoints)), answered)

    def action_bring_back(self) -> None:
        lost = self._lost_worker()
        if lost is None:
            self.notify("No worker to bring back: b restarts a job whose worker died while the PS runs.",
                        severity="warning")
            return
        self._bring_back(self.job.bring_back(lost), automatic=False)

    def _bring_back(self, command: BringBack, automatic: bool) -> None:
        """Checkpoint now and restart the job from there (torch RPC cannot re-admit one worker)."""
        count = (f" (restart {self.job.restarts.get(command.worker, 0) + 1} of {self.job.config.max_restarts})"
                 if automatic else "")
        self.notify(f"{command.why}: restarting the job from a checkpoint taken now{count}.",
                    title="bringing a worker back", severity="warning")
        self._stop_then(command)

    def action_quit_monitor(self) -> None:
        if self.busy:
            self.notify("Stopping the job; quit again when it has stopped.", severity="warning")
            return
        if not (self.owned and self.job_running()):
            self.exit(self.exit_code())
            return

        def answered(choice: str | None) -> None:
            if choice == "stop":
                self._stop_then(Quit())
            elif choice == "leave":
                self.detached = True
                self.exit(0)

        self.push_screen(quit_question(self.run_dir), answered)

    def exit_code(self) -> int:
        """0 when the run finished or was stopped on request, else 1."""
        outcome = self.state.outcome
        return 0 if outcome in ("finished", "stopped") or outcome is None and self.job_running() else 1

    # --- stopping and restarting --------------------------------------------------------------
    def _stop_then(self, then: Then) -> None:
        """Stop the job in a thread, then (JobStopped) start again, quit, or just stay."""
        self.busy = True
        self.stopping = self.job_running()
        self.draw()
        self._stop_worker(then)

    @work(thread=True, exclusive=True, group="stop")
    def _stop_worker(self, then: Then) -> None:
        self.job.stop()
        self.post_message(JobStopped(then))

    def on_job_stopped(self, message: JobStopped) -> None:
        self.stopping = False
        self.tick()  # note the exits and write them down while we still hold this run
        self.busy = False
        then = message.then
        if isinstance(then, Quit):
            self.exit(self.exit_code())
        elif isinstance(then, (Restart, BringBack)):
            if isinstance(then, Restart) and then.resume and not self.state.checkpoints:
                self.notify("No checkpoint was written, so the job starts fresh.", severity="warning")
            try:
                config = (self.sources.updated(self.config) if self.sources
                          else RunConfig.from_dict(self.config.to_dict()))  # type: ignore[union-attr]
                self.config = config
                run_dir = self.job.restart(then, config)
            except ConfigError as exc:  # the config file was changed into something invalid, or --mps failed
                self.notify(str(exc), title="not restarted", severity="error", timeout=15, markup=False)
                return
            if run_dir is None:
                self.notify("Not restarted: the PS wrote no checkpoint to resume from.", severity="error")
                return
            self._started(run_dir)
            self.tick()

    def on_unmount(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        if self.feed is not None:
            self.feed.close()


def run_monitor(config: RunConfig, restart_on_change: bool = False) -> int:
    """`adt run`: check and prepare the job, then run it under the monitor; returns the exit code."""
    from .launch import prepare_job

    prepare_job(config)  # bad data or config fails here, in plain text, before the screen opens
    comparison = Comparison(Reference(config.compare, config.runs_dir) if config.compare else None)
    app = AdtApp(config, restart_on_change=restart_on_change, comparison=comparison)
    code = app.run()
    return _after(app, code)


def watch_run(run_dir: str | Path, compare: str = "") -> int:
    """`adt watch RUN_DIR`: open the monitor on an existing run (running or finished)."""
    run_dir = Path(run_dir)
    if not RunDir(run_dir).is_run():
        print(f"adt watch: {run_dir} is not a run directory (no config.json). "
              "Fix: pass runs/<run-id>, e.g. the last one in `ls runs/`.")
        return 2
    comparison = Comparison(Reference(compare, run_dir.resolve().parent) if compare else None)
    app = AdtApp(run_dir=run_dir, comparison=comparison)
    return _after(app, app.run())


def _after(app: AdtApp, code: int | None) -> int:
    if app.detached and app.run_dir is not None:
        print(f"The job keeps running in the background. Re-attach with: adt watch {app.run_dir}")
    return 1 if code is None else code
