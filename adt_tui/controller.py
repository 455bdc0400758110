"""One job's life, the same for every front end: start, poll, a lost worker brought back, restart,
stop, stale code (what changed under the job since it started), how the run ended and the exit
code. No Textual here: the monitor, `adt run --no-ui` and `adt launch` drive a `JobController`,
and only how they show it differs.

The processes themselves are one start's process layer: the Supervisor's children
(adt_tui/supervisor.py), or torchrun's under `adt launch` (adt_tui/multinode.py). This class
holds what lasts across the job's starts: the config, the restarts each worker used, whether the
exits of the last start were written down. A restart is a typed command (`Restart`,
`BringBack`), not a string.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.config import RunConfig
from engine.events import EventWriter, ExitCode
from engine.rundir import RunDir, checkpoint_path
from engine.sources import job_sources

from .processes import describe_exit
from .stale import StaleCode, StartedSources
from .supervisor import Child, Supervisor, new_run_id


@dataclass(frozen=True)
class Restart:
    """Start the job again with the code and config as they are now: resumed from its last
    checkpoint (the same run), or fresh (a new run)."""

    resume: bool


@dataclass(frozen=True)
class BringBack:
    """Restart from a checkpoint taken as the job stopped, so that a lost worker trains again
    (torch RPC cannot re-admit one rank into a running group)."""

    worker: int
    why: str


@dataclass(frozen=True)
class Quit:
    """Leave the job stopped and end the front end."""


Then = Restart | BringBack | Quit | None  # what a front end does once a stop is done


class JobController:
    def __init__(self, config: RunConfig | None = None, python: str = sys.executable,
                 processes: Callable[[RunConfig | None, str], Supervisor] = Supervisor,
                 source_dirs: list[Path] | None = None) -> None:
        """`processes` makes one start's process layer from the config: the Supervisor (local
        children), or `adt launch`'s TorchrunNode (adt_tui/multinode.py). `source_dirs` replaces
        adt's own source directories among the job's watched files (tests watch a temp dir)."""
        if config is not None and not config.run_id:
            config.run_id = new_run_id()  # known before the start: a front end reads its run dir
        self.config = config
        self.python = python
        self.processes = processes
        self.source_dirs = source_dirs
        self.supervisor: Supervisor | None = None
        self.stale: StaleCode | None = None  # the job's files as it started, and what changed since
        self.restarts: dict[int, int] = {}  # worker -> times the job restarted to bring it back
        self.finished = False  # the exits of the current start are written down

    @classmethod
    def attach(cls, run_dir: str | Path, source_dirs: list[Path] | None = None) -> JobController:
        """Watch (and maybe stop) a job another adt started: `adt watch`. Its files count as they
        are now; the code it runs is what its run_start says."""
        job = cls(source_dirs=source_dirs)
        job.supervisor = Supervisor.attach(run_dir)
        job.config = job.supervisor.config
        job.stale = job._sources_now(job.config)
        return job

    # --- what it is ---------------------------------------------------------------------------
    @property
    def owned(self) -> bool:
        """We started the job (not only watch it): we restart it and write down its end."""
        return self.supervisor is not None and not self.supervisor.attached

    @property
    def run_dir(self) -> Path | None:
        if self.supervisor is not None:
            return self.supervisor.run_dir
        return RunDir.of(self.config).path if self.config else None

    @property
    def children(self) -> list[Child]:
        return self.supervisor.children if self.supervisor else []

    def running(self) -> bool:
        return any(c.running for c in self.children)

    def main_child(self) -> Child | None:
        return self.supervisor.main_child() if self.supervisor else None

    # --- its life -----------------------------------------------------------------------------
    def start(self, config: RunConfig | None = None) -> Path:
        """Start the job's processes (with Ctrl+C and SIGTERM held until every one is known: one
        arriving mid-start would leave a child started but unknown, which no stop would reach)."""
        self.config = config or self.config
        if self.config is not None:  # what stale means from now on (`adt launch` watches nothing)
            self.stale = self._sources_now(self.config)
        mps = None
        if self.supervisor is not None:
            mps, self.supervisor.mps = self.supervisor.mps, None  # the job's MPS daemon lives on
        self.supervisor = self.processes(self.config, self.python)
        self.supervisor.mps = mps
        self.finished = False
        return _holding_signals(self.supervisor.start)

    def poll(self) -> list[Child]:
        """Children that exited since the last poll."""
        return self.supervisor.poll() if self.supervisor else []

    def lost_worker(self) -> Child | None:
        """A worker that died (non-zero exit) while the PS runs and nobody asked for a stop."""
        sup = self.supervisor
        main = self.main_child()
        if not self.owned or sup is None or sup.stopping or main is None or not main.running:
            return None
        return next((c for c in sup.children
                     if c.role == "worker" and c.exited and c.exit_code not in (0, None)), None)

    def restart_due(self) -> BringBack | None:
        """The automatic bring-back owed to a lost worker, while it has restarts left
        (`--max-restarts` each)."""
        lost = self.lost_worker()
        if lost is None or self.restarts.get(lost.worker, 0) >= self.config.max_restarts:  # type: ignore[union-attr]
            return None
        return self.bring_back(lost)

    def bring_back(self, lost: Child) -> BringBack:
        return BringBack(lost.worker, f"{lost.label} {describe_exit(lost.exit_code)}")

    def stop(self, grace: float | None = None, announce: Callable[[], None] | None = None) -> None:
        """Graceful stop (the PS writes a final checkpoint), SIGKILL after the grace period;
        `announce` runs once every process has its signal. Blocks: the monitor calls it from a
        thread."""
        if self.supervisor is not None and self.running():
            self.supervisor.stop(grace, announce)
        elif announce is not None:
            announce()  # nothing runs: nothing to wait for either

    def kill(self) -> None:
        if self.supervisor is not None:
            self.supervisor.kill()

    def stop_after_ctrl_c(self, say: Callable[[str], None], what: str, grace: float,
                          ps_here: bool = True) -> None:
        """The terminal's Ctrl+C: stop gracefully, saying so once every process has its signal;
        a second Ctrl+C kills at once."""
        line = (f"stopping {what} (grace period {grace:.0f}s"
                + ("; the PS writes a final checkpoint" if ps_here else "") + "; Ctrl+C again kills at once)...")
        try:
            self.stop(grace, announce=lambda: say(line))
        except KeyboardInterrupt:
            self.kill()

    def finish(self, run_ended: bool) -> None:
        """Once every child has exited: write down how each ended (and, if the PS could not,
        how the run did). Once per start."""
        if self.finished or not self.owned or self.running():
            return
        self.finished = True
        self.supervisor.record_exits(run_ended)  # type: ignore[union-attr]

    def release(self) -> None:
        """The job is over for good (no restart follows): quit its MPS daemon, if it has one."""
        if self.supervisor is not None:
            self.supervisor.release()

    def checkpoint(self) -> Path | None:
        """The checkpoint a resume would start from."""
        if self.config is None or self.supervisor is None:
            return None
        path = checkpoint_path(self.config.checkpoints_dir, self.supervisor.run_id)
        return path if path.exists() else None

    def restart(self, command: Restart | BringBack, config: RunConfig | None = None) -> Path | None:
        """After `stop` and `finish`: start again as the command says, with `config` (the current
        one if None: the monitor passes one re-read from its TOML file). A resume needs the
        checkpoint the stop wrote; None, and nothing started, without one (a bring-back), or a
        fresh run instead (a restart)."""
        config = config or RunConfig.from_dict(self.config.to_dict())  # type: ignore[union-attr]
        run_id = self.supervisor.run_id if self.supervisor else ""
        resume = isinstance(command, BringBack) or command.resume
        if resume and self.checkpoint() is None:
            if isinstance(command, BringBack):
                return None
            resume = False
        if isinstance(command, BringBack):
            self._note_restart(command)
        config.resume, config.run_id = (run_id, run_id) if resume else ("", "")
        return self.start(config)

    def exit_code(self, outcome: str | None, interrupted: bool) -> ExitCode:
        """The code `adt run` ends with: bad input 2 (the PS said so before training), Ctrl+C
        130, a finished run 0, anything else 1."""
        main = self.main_child()
        if main is not None and main.exit_code == ExitCode.BAD_INPUT:
            return ExitCode.BAD_INPUT
        if interrupted:
            return ExitCode.INTERRUPTED
        return ExitCode.OK if outcome == "finished" else ExitCode.FAILED

    def stopped_cleanly(self) -> bool:
        """The main process ended as a stop asks it to (0, or SIGTERM before it could say so)."""
        main = self.main_child()
        return main is None or main.exit_code in (0, -signal.SIGTERM)

    def _sources_now(self, config: RunConfig) -> StaleCode:
        return StaleCode(StartedSources(job_sources(config, self.source_dirs), config.config_file))

    def _note_restart(self, command: BringBack) -> None:
        """Count the restart and write `worker_restart` (every child has exited: we may write)."""
        self.restarts[command.worker] = self.restarts.get(command.worker, 0) + 1
        sup = self.supervisor
        assert sup is not None and self.config is not None
        writer = EventWriter(RunDir(sup.run_dir).events, sup.run_id)
        writer.emit("worker_restart", worker=command.worker, restart=self.restarts[command.worker],
                    max_restarts=self.config.max_restarts, reason=command.why)
        writer.close()


def _holding_signals(start: Callable[[], Path]) -> Path:
    """Run `start` with Ctrl+C and SIGTERM held; one that came meanwhile is raised after it."""
    held: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: held.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return start()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if held:
            raise KeyboardInterrupt  # now the stop reaches every process
