"""What one process reaches on this data with this model: the reference a run is held to when no
`--compare` names one.

The expectations are the single-process (`--workers 0`) curves of our benchmarks, averaged over
their seeds, in adt_tui/expectations.json (written by `python -m bench.expectations`). A run
gets one when its data and every setting that shapes a single process's curve match an entry:
the data by what the entry names of it (the built-in generator, its seed, class count, image
size and train samples; or a prepared set's fingerprint), the settings by `SHAPING`. A run that
matches none has no expectation: a curve for other data or another LR would be a wrong yardstick.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .series import Curves

TABLE = Path(__file__).with_name("expectations.json")
# The settings a single process's validation curve depends on; the update rule, worker count and
# devices do not shape it (the first two are what the comparison judges).
SHAPING = ("model", "small_input_stem", "epochs", "batch_size", "optimizer", "lr", "lr_schedule", "warmup",
           "momentum", "weight_decay", "label_smoothing", "augment")


@dataclass(frozen=True)
class Entry:
    source: str  # the benchmark it comes from, for people
    data: dict[str, Any]  # what the data must be: each field named must match the run's
    config: dict[str, Any]  # the SHAPING settings it ran with
    curve: list[tuple[float, float]]  # (samples seen, validation accuracy), mean over seeds


def data_identity(start: dict[str, Any]) -> dict[str, Any]:
    """What a run_start says of its data, in the fields an entry may name."""
    data = start.get("data") or {}
    return {"source": data.get("source"), "seed": data.get("seed"), "fingerprint": data.get("fingerprint"),
            "image_size": data.get("image_size"), "num_classes": start.get("num_classes"),
            "train_samples": start.get("train_samples")}


@cache
def entries(table: Path) -> tuple[Entry, ...]:
    if not table.exists():
        return ()
    return tuple(Entry(e["source"], e["data"], e["config"], [tuple(p) for p in e["curve"]])
                 for e in json.loads(table.read_text()))


def matching(start: dict[str, Any], table: Path | None = None) -> Entry | None:
    """The expectation for the run that wrote this run_start, if `table` (default TABLE) holds one."""
    identity, config = data_identity(start), start.get("config") or {}
    for entry in entries(table or TABLE):
        if (all(identity.get(k) == v for k, v in entry.data.items())
                and all(config.get(k) == v for k, v in entry.config.items())):
            return entry
    return None


class Expectation:
    """An entry as a comparison's reference: a finished run of validation points only, on the
    samples axis (its wall times were another machine's, so it is not drawn against time)."""

    name = "single process"
    tag = "1 process"  # the header's short name
    ended = True
    timed = False

    def __init__(self, entry: Entry) -> None:
        self.entry = entry
        self.curves = Curves.from_events({"kind": "validation", "t": 0.0, "samples_seen": x, "acc": acc}
                                         for x, acc in entry.curve)

    def describe(self) -> str:
        return f"what one process reaches on this data and settings ({self.entry.source})"

    def refresh(self) -> bool:
        return False

    def differences(self, start: dict[str, Any] | None) -> list[str]:
        return []  # matched on the data: comparable by construction

    def warning(self, start: dict[str, Any] | None) -> str | None:
        return None
