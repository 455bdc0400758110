"""Checkpoints: `checkpoints/<run-id>/{last,best}.pt`, written atomically, loaded safely.

Writing goes to a temp file in the same directory, is fsynced, then renamed over the old file and
the directory fsynced: a crash, Ctrl+C or a full disk leaves the previous checkpoint intact, never
a half-written one under the real name. Loading uses `weights_only=True`, so a checkpoint cannot
run code, and turns every failure into a CheckpointError that names the file.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError  # defined without torch, so the command line can catch it

__all__ = ["FORMAT", "CheckpointError", "load_checkpoint", "save_checkpoint"]

FORMAT = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Atomically write `payload` (tensors, dicts, lists, numbers, strings) to `path`."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer that was SIGKILLed
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if not isinstance(exc, Exception):
            raise  # Ctrl+C: the temp file is gone and the previous checkpoint is untouched
        # torch reports a failed write (disk full, file too large) as its own RuntimeError, with
        # the OSError as its context: name the real cause.
        cause = next((e for e in (exc, exc.__cause__, exc.__context__) if isinstance(e, OSError)), None)
        reason = (cause.strerror or str(cause)) if cause is not None else f"{type(exc).__name__}: {exc}"
        raise CheckpointError(f"could not write checkpoint {path}: {reason}. The previous checkpoint "
                              "is unchanged. Fix: free disk space (or check the directory's "
                              "permissions) and let the next checkpoint write it.") from exc
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by save_checkpoint, with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist. Fix: check the run id "
                              "(`ls checkpoints/`) or start a fresh run.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a truncated or foreign file
        if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in str(exc):
            raise CheckpointError(f"refusing to load {path}: it holds objects other than tensors "
                                  "and plain data, which could run code when loaded. Fix: load "
                                  "only checkpoints that adt wrote.") from exc
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}). "
                              "Fix: resume from another checkpoint of the run (best.pt) "
                              "or start a fresh run.") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "model" not in payload:
        raise CheckpointError(f"{path} is not an adt checkpoint (format {FORMAT}). "
                              "Fix: pass a run id whose checkpoints adt wrote.")
    return payload
