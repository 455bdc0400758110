"""A run's scalars as TensorBoard event files: `adt export RUN --tensorboard DIR`, or live with
`--tensorboard DIR` on a run.

Written with the `tensorboard` package's own event-file writer and summary protos (no TensorFlow,
no torch), into DIR/<run-id>/. The step of every point is samples seen (all workers), folded by
the same `Curves` the charts use, so TensorBoard's x axis is the monitor's. The run id, its
config and its code fingerprint go in as text and as hparams.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

from .series import Curves, num

INSTALL = "pip install tensorboard (or pip install -e '.[tensorboard]')"


class TensorBoardWriter:
    """Feed it the run's events in file order; it writes every scalar as it arrives."""

    def __init__(self, logdir: str | Path, run_id: str) -> None:
        try:
            from tensorboard.compat.proto import event_pb2
            from tensorboard.plugins.scalar.summary_v2 import scalar_pb
            from tensorboard.plugins.text.summary_v2 import text_pb
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError as exc:
            raise ConfigError("tensorboard", f"needs the tensorboard package ({exc})", INSTALL) from exc
        self._event, self._scalar, self._text = event_pb2.Event, scalar_pb, text_pb
        self.path = Path(logdir).resolve() / run_id
        self._writer = EventFileWriter(str(self.path))
        self.curves = Curves()  # only for its samples axis

    def write_all(self, events: Iterable[dict[str, Any]]) -> None:
        for event in events:
            self.write(event)

    def write(self, e: dict[str, Any]) -> None:
        kind = e.get("kind")
        self.curves.apply(e)
        step, t = int(self.curves.last_x), num(e.get("t")) or 0.0
        if kind == "worker_metrics" and e.get("timing"):
            w = e.get("worker", 0)
            self._scalars(t, step, {f"train/loss/worker{w}": e.get("loss"), f"train/acc/worker{w}": e.get("acc"),
                                    f"images_per_s/worker{w}": e.get("images_per_s")})
        elif kind == "ps_metrics":
            stale = e.get("staleness") or {}
            self._scalars(t, step, {"lr": e.get("lr"), "staleness/p50": stale.get("p50"),
                                    "staleness/p95": stale.get("p95"), "staleness/max": stale.get("max"),
                                    "updates_per_s": e.get("updates_per_s")})
        elif kind == "validation":
            self._scalars(t, step, {"val/loss": e.get("loss"), "val/acc": e.get("acc")})
        elif kind == "run_start":
            self._run_start(e, t, step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def _scalars(self, t: float, step: int, values: dict[str, Any]) -> None:
        for tag, value in values.items():
            value = num(value)
            if value is not None:
                self._writer.add_event(self._event(wall_time=t, step=step, summary=self._scalar(tag, value)))

    def _run_start(self, e: dict[str, Any], t: float, step: int) -> None:
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb

        config = e.get("config") or {}
        code = e.get("code") or {}
        about = (f"run {e.get('run_id')}: {e.get('model')}, {e.get('mode')} with {e.get('workers')} workers, "
                 f"update rule {e.get('update_rule')}, code {code.get('fingerprint')}"
                 + (" (resumed)" if e.get("resumed") else ""))
        for tag, text in (("run", about), ("config", "```\n" + json.dumps(config, indent=1) + "\n```"),
                          ("code", json.dumps(code, indent=1))):
            self._writer.add_event(self._event(wall_time=t, step=step, summary=self._text(tag, text)))
        hparams = {k: v for k, v in config.items() if isinstance(v, (bool, int, float, str))}
        hparams.update(run_id=str(e.get("run_id")), code=str(code.get("fingerprint")))
        self._writer.add_event(self._event(wall_time=t, step=step, summary=hparams_pb(hparams)))


def export(run_dir: Path, logdir: str | Path) -> Path:
    """Write a whole run (finished or still running: what it has so far); returns its folder."""
    from engine.events import read_events
    from engine.rundir import RunDir

    writer = TensorBoardWriter(logdir, run_dir.name)
    writer.write_all(read_events(RunDir(run_dir).events))
    writer.close()
    return writer.path
