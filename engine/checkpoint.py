"""Checkpoints: `checkpoints/<run-id>/{last,best}.pt`, written atomically, loaded safely.

Writing goes to a temp file in the same directory, is fsynced, then renamed over the old file and
the directory fsynced: a crash, Ctrl+C or a full disk leaves the previous checkpoint intact, never
a half-written one under the real name. Loading uses `weights_only=True`, so a checkpoint cannot
run code, and turns every failure into a CheckpointError that names the file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file and the fix."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Atomically write `payload` (tensors, dicts, lists, numbers, strings) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CheckpointError(f"could not write checkpoint {path}: {exc.strerror or exc}. "
                                  "The previous checkpoint is unchanged. Fix: free disk space.") from exc
        raise
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
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}). "
                              "Fix: resume from another checkpoint of the run (best.pt) "
                              "or start a fresh run.") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "model" not in payload:
        raise CheckpointError(f"{path} is not an adt checkpoint (format {FORMAT}). "
                              "Fix: pass a run id whose checkpoints adt wrote.")
    return payload
