"""Everything checked or prepared before a job's first process starts (monitor and headless)."""

from __future__ import annotations

import errno
import socket
import sys
from pathlib import Path
from typing import TextIO

from engine.config import DEFAULT_DATA, ConfigError, RunConfig
from engine.rundir import checkpoint_path


def prepare_job(config: RunConfig, out: TextIO = sys.stdout,
                listeners: list[str] | None = None, local_workers: int | None = None) -> None:
    """Place the job's processes, create the built-in data on first use, check the data, a resume
    target and the port.

    Prints the data report, the placement and where the job will listen (`listeners`, else
    `adt run`'s). `local_workers`: this machine's workers when the job spans machines.

    Raises ConfigError, DataError or CheckpointError (all exit code 2) before anything runs.
    """
    from engine.models import model_builder

    from .mps import require_mps

    model_builder(config.model)  # an unknown name or a user's file that will not import: before any data is made
    if config.mps:
        require_mps()
    if config.data == DEFAULT_DATA and not config.train_url and not Path(DEFAULT_DATA).exists():
        from engine.synth import write_synthetic

        print(f"first run: writing the built-in synthetic data set to {Path(DEFAULT_DATA).resolve()}",
              file=out, flush=True)
        write_synthetic(DEFAULT_DATA)
    from engine.preflight import preflight

    report = preflight(config, local_workers)  # which data is it really reading: printed before anything starts
    if listeners is not None:
        report.listeners = listeners
    print("\n".join(report.lines()), file=out, flush=True)
    if config.resume:
        last = checkpoint_path(config.checkpoints_dir, config.resume)
        if not last.is_file():
            raise ConfigError("resume", f"names run {config.resume!r}, which has no checkpoint {last}",
                              "pick a run id from `ls checkpoints/`")
        from engine.node import check_resume

        check_resume(config, report.spec)  # other data or model: refused here, before the run's files are touched
        config.run_id = config.resume
    if config.port:
        _check_port_free(config.host, config.port)


def _check_port_free(host: str, port: int) -> None:
    """A taken --port fails here, by name, instead of as an RPC traceback after the start."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the PS's listener does: a port left in TIME_WAIT by an earlier run is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return  # not ours to judge here (e.g. an address of another machine)
            raise ConfigError("port", f"is {port}, but {host}:{port} is already in use",
                              "pass another --port, or leave it out to pick a free one") from None
