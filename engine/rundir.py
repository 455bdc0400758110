"""A run's files, named once: `runs/<id>/` holds config.json, events.jsonl, pids.json and
logs/<process>.log; `checkpoints/<id>/` holds last.pt and best.pt. Every process and front end
finds them through `RunDir`, so a file's name and place live here only."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import RunConfig


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def of(cls, config: RunConfig) -> RunDir:
        return cls(Path(config.runs_dir).resolve() / config.run_id)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def pids(self) -> Path:
        return self.path / "pids.json"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def log(self, process: str) -> Path:
        """The log of one process: "ps", "worker0", "single", "mps", "torchrun"."""
        return self.logs / f"{process}.log"

    def is_run(self) -> bool:
        return self.config.is_file()

    def read_config(self) -> dict[str, Any]:
        return json.loads(self.config.read_text())

    def create(self, config: RunConfig) -> None:
        """Make the directory and its logs folder, and save the config."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps(config.to_dict(), indent=1))

    def write_pids(self, children: dict[str, int]) -> None:
        """Who supervises the job and its processes (atomically): `adt watch` re-attaches with it."""
        info = {"supervisor": os.getpid(), "host": socket.gethostname(), "children": children}
        tmp = self.pids.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self.pids)

    def read_pids(self) -> dict[str, int]:
        """The job's processes by name; empty when pids.json is missing or unreadable."""
        try:
            return json.loads(self.pids.read_text())["children"]
        except (OSError, ValueError, KeyError):
            return {}


def checkpoint_path(checkpoints_dir: str | Path, run_id: str, tag: str = "last") -> Path:
    """checkpoints/<run-id>/<tag>.pt (tag: last or best)."""
    return Path(checkpoints_dir).resolve() / run_id / f"{tag}.pt"
