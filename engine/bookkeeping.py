"""The run's records of the global model (the PS's apply thread only): its BatchNorm statistics
brought to its weights, validations judged by the health checks, the `best` and `last`
checkpoints, and what a resume restores. The algorithm (engine/server.py) says when; this says how.

BatchNorm: workers train in train mode (batch statistics). Before validation and checkpoints the
running statistics are recomputed at the current weights on `bn_recompute` training samples (or,
with 0, taken as the mean of the running statistics every worker sends with its pushes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, save_checkpoint
from .config import RunConfig
from .data import DataSpec, Head, ShardStream, make_loader
from .evaluate import evaluate, recompute_batchnorm
from .events import AlertCode, EventWriter
from .flat import FlatModel
from .health import Health
from .rundir import checkpoint_path


@dataclass(frozen=True)
class Progress:
    """Where the run is: what every record is stamped with."""

    version: int
    epoch: int
    samples_seen: int


class Bookkeeping:
    def __init__(self, config: RunConfig, data: DataSpec, events: EventWriter, flat: FlatModel,
                 device: torch.device, checkpoint_dir: Path, meta: dict[str, Any],
                 workers_buffers: Callable[[], list[torch.Tensor]]) -> None:
        self.config, self.data, self.events, self.flat, self.device = config, data, events, flat, device
        self.checkpoint_dir, self.meta = checkpoint_dir, meta
        self.workers_buffers = workers_buffers  # each worker's latest running statistics
        self.health = Health(len(data.classes), config.chance_warmup_evals)
        self.best_val_acc: float | None = None
        self.last_val: dict[str, Any] | None = None
        self._checkpointed_version = self._buffers_version = -1
        # As many loader processes as the BatchNorm pass has batches, at most: more would start and
        # decode (4 batches ahead each) only to be shut down.
        self._bn_loaders = min(config.loader_workers, -(-config.bn_recompute // config.batch_size))
        self._bn_stream = ShardStream(data.train, 0, 1, self._bn_loaders, config.batch_size, train=True,
                                      seed=config.seed + 1, augment=config.augment)

    def validate(self, at: Progress, warming_up: bool) -> tuple[dict[str, Any], bool]:
        """Validate the global model and judge it: (the result, whether it diverged)."""
        self._sync_buffers(at.version)
        result = evaluate(self.flat.model, self.data.val, self.device, self.config.loader_workers)
        self.last_val = {**result, "version": at.version}
        self.events.emit("validation", version=at.version, epoch=at.epoch, samples_seen=at.samples_seen,
                         chance=1 / len(self.data.classes), **result)
        alerts = self.health.validation(result["loss"], result["acc"], result["count"], warming_up)
        for level, code, message in alerts:
            self.events.emit("alert", level=level, code=code, message=message, worker=None)
        return result, bool(alerts) and self.health.diverged()

    def end_epoch(self, at: Progress, rule_state: dict[str, Any], warming_up: bool) -> bool:
        """An epoch's records: validate, then `last`, and `best` when it is; True if it diverged."""
        result, diverged = self.validate(at, warming_up)
        best = self.best_val_acc is None or result["acc"] >= self.best_val_acc
        if best:
            self.best_val_acc = result["acc"]  # before `last` is written, so that it records it too
        self.checkpoint("last", at, rule_state)
        if best:
            self.checkpoint("best", at, rule_state)
        return diverged

    def finish(self, at: Progress, rule_state: dict[str, Any], validate: bool, warming_up: bool) -> None:
        """A run's last records: validate the final model if asked and not yet done at this
        version, and make sure `last` holds the final version."""
        if validate and (self.last_val is None or self.last_val.get("version") != at.version):
            result, _ = self.validate(at, warming_up)
            if self.best_val_acc is None or result["acc"] >= self.best_val_acc:
                self.best_val_acc = result["acc"]
                self.checkpoint("best", at, rule_state)
        if self._checkpointed_version != at.version:
            self.checkpoint("last", at, rule_state)

    def checkpoint(self, tag: str, at: Progress, rule_state: dict[str, Any]) -> None:
        """Write checkpoints/<run>/<tag>.pt atomically; a failure is an alert, not a crash."""
        self._sync_buffers(at.version)
        path = checkpoint_path(self.checkpoint_dir.parent, self.checkpoint_dir.name, tag)
        payload = {"model": self.flat.model.state_dict(), "rule": rule_state, "version": at.version,
                   "epoch": at.epoch, "samples_seen": at.samples_seen, "best_val_acc": self.best_val_acc,
                   "val": self.last_val, "config": self.config.to_dict(), "meta": self.meta}
        try:
            save_checkpoint(path, payload)
        except CheckpointError as exc:
            self.events.emit("alert", level="error", code=AlertCode.CHECKPOINT_FAILED, message=str(exc), worker=None)
            return
        if tag == "last":
            self._checkpointed_version = at.version
        self.events.emit("checkpoint", tag=tag, path=str(path), version=at.version, epoch=at.epoch,
                         val_acc=self.last_val["acc"] if self.last_val else None)

    def restore(self, payload: dict[str, Any]) -> Progress:
        """A resumed run's model and best accuracy; where it was."""
        self.flat.model.load_state_dict(payload["model"])
        self.best_val_acc = payload.get("best_val_acc")
        return Progress(payload["version"], payload["epoch"], payload.get("samples_seen", 0))

    def _sync_buffers(self, version: int) -> None:
        """Bring the BatchNorm statistics to the current weights (once per version)."""
        if not self.flat.buffers.numel() or self._buffers_version == version:
            return
        self._buffers_version = version
        if self.config.bn_recompute:
            self._bn_stream.set_epoch(version)  # other samples each time
            # Loader processes: decoding the samples inline took ~1 s of every epoch end.
            batches = make_loader(Head(self._bn_stream), self._bn_loaders)
            recompute_batchnorm(self.flat.model, iter(batches), self.config.bn_recompute, self.device)
            return
        latest = self.workers_buffers()
        if latest:
            self.flat.buffers.copy_(torch.stack([b.to(self.device).float() for b in latest]).mean(0))
