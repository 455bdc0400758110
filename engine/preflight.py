"""Preflight: prove the data a run will read is what it claims to be, before any process starts.

`engine.data.resolve_data` already checks that shards exist, are non-empty and sit beside a
manifest, and that both splits share one class map and size. On top of that, `preflight` checks
that the shards are readable and match the manifest's byte counts, that the first samples of every
shard decode to images of the manifest's size with labels in range, that the model's class count
matches, and how the shards are shared among the worker x loader readers. It reads only the first
samples of each shard, so it stays well under a second on the built-in data. Then it builds the
model and runs one batch of the data's size through it (engine/models.py: check_model).

Remote shards (engine/remote.py): every http(s) shard was asked for its size (HEAD) when its
split was loaded; here that size meets the manifest's, and only each split's first shard is
decoded. A pipe: shard is checked by its manifest alone.
"""

from __future__ import annotations

import os
import time
from contextlib import closing
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from .config import RunConfig, update_rule_of
from .data import DataSpec, Split, decode_sample, reader_plan, resolve_data, shard_samples
from .errors import DataError
from .listen import run_listeners
from .mirror import choose_augment
from .models import check_model
from .placement import gpu_count, place
from .remote import is_pipe, is_remote, shard_name

SAMPLES_PER_SHARD = 2  # enough to catch a wrong format, size or class map; cheap on any data set


@dataclass
class PreflightReport:
    """Which data a run will really read, and what to be careful about."""

    spec: DataSpec
    readers: int
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    listeners: list[str] = field(default_factory=list)  # where the job will listen (engine.listen)
    model: str = ""  # the model check's line
    placement: str = ""  # where each process runs (engine.placement)
    augment: str = ""  # the training augmentation and why (engine.mirror)
    rule: str = ""  # the update rule `auto` chose

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (for events.jsonl and run records)."""
        splits = {}
        for name, split in (("train", self.spec.train), ("val", self.spec.val)):
            splits[name] = {"dir": split.folder, "manifest": split.manifest_path,
                            "shards": len(split.urls), "samples": split.num_samples,
                            "content_hash": split.manifest.get("content_hash", "")}
        return {"train": splits["train"], "val": splits["val"], "num_classes": len(self.spec.classes),
                "image_size": list(self.spec.image_size), "fingerprint": self.spec.fingerprint(),
                "readers": self.readers, "warnings": list(self.warnings), "seconds": self.seconds}

    def lines(self) -> list[str]:
        """The report as lines for a terminal."""
        d = self.to_dict()
        h, w = d["image_size"]
        lines = [f"data ok: {d['num_classes']} classes, {w}x{h} images, fingerprint {d['fingerprint']}"]
        for name in ("train", "val"):
            s = d[name]
            lines.append(f"  {name:5} {s['samples']} samples in {s['shards']} shards: {s['dir']}")
        lines += [f"  warning: {text}" for text in self.warnings]
        lines.append(f"  checked in {self.seconds:.2f}s")
        return lines + [line for line in (self.model, self.placement, self.rule, self.augment) if line] + self.listeners


def readers_of(config: RunConfig) -> int:
    """How many processes read training shards: workers (1 when single-process) x loader processes."""
    return max(1, config.workers) * max(1, config.loader_workers)


def _check_listed(split: Split, name: str, spec: str) -> list[str]:
    """Every manifest shard must be present when a directory was given; a narrower URL is a warning."""
    present = {shard_name(u) for u in split.urls}
    missing = [s["name"] for s in split.manifest["shards"] if s["name"] not in present]
    if not missing:
        return []
    if not is_remote(spec) and Path(spec.removeprefix("file:")).expanduser().is_dir():
        raise DataError(f"{name} shard {Path(split.folder) / missing[0]} is listed in {split.manifest_path} but "
                        f"missing ({len(missing)} of {len(split.manifest['shards'])} missing). "
                        "Fix: restore the shard or re-create the shard set.")
    return [(f"{name} reads {len(present)} of the {len(split.manifest['shards'])} shards in "
            f"{split.manifest_path} ({spec}); the others are left out on purpose?")]


def _check_shard(split: Split, url: str, name: str, entry: dict[str, Any], size: tuple[int, int],
                 num_classes: int, decode: bool = True) -> None:
    """Readable, the manifest's byte count, and the first samples decode with in-range labels.

    A pipe: shard is left to its manifest: finding its size would mean running its command."""
    if is_pipe(url):
        return
    if is_remote(url):
        actual = split.remote[url].size
    else:
        if not os.access(url, os.R_OK):
            raise DataError(f"{name} shard {url} is not readable. Fix: check its permissions.")
        actual = os.path.getsize(url)
    if actual is not None and "bytes" in entry and actual != entry["bytes"]:
        raise DataError(f"{name} shard {url} is {actual} bytes, but its manifest says {entry['bytes']}; "
                        "it was truncated or changed. Fix: re-create the shard set.")
    if not decode:
        return
    try:
        with closing(shard_samples([url])) as stream:
            samples = list(islice(stream, SAMPLES_PER_SHARD))
    except DataError as exc:
        raise DataError(f"{name} {exc}") from None
    except Exception as exc:
        reason = exc.args[0] if exc.args else exc  # webdataset appends the stream and URL to args
        raise DataError(f"{name} shard {url} is not a readable tar file ({type(exc).__name__}: {reason}). "
                        "Fix: re-create the shard set.") from exc
    if not samples:
        raise DataError(f"{name} shard {url} holds no samples. Fix: re-create the shard set.")
    for sample in samples:
        decode_sample(sample, size, num_classes)  # its DataError names the shard and the key


def _reader_warnings(split: Split, readers: int, config: RunConfig) -> list[str]:
    """Describe how the training shards are shared, when they are not one-per-reader and even."""
    shards = len(split.urls)
    workers, loaders = max(1, config.workers), max(1, config.loader_workers)
    who = f"{readers} readers ({workers} workers x {loaders} loader processes)"
    if shards % readers == 0:
        counts = {s["name"]: s["count"] for s in split.manifest["shards"]}
        per_reader = [sum(counts[shard_name(u)] for u, _, _ in reader_plan(split.urls, r, readers))
                      for r in range(readers)]
        if min(per_reader) * 1.25 < max(per_reader):
            return [(f"train's {shards} shards hold uneven sample counts: {min(per_reader)} to "
                    f"{max(per_reader)} samples per reader per epoch. Fix: re-create the shard set.")]
        return []
    shared = shards % readers
    k = -(-readers // shared)
    return [(f"train has {shards} shards for {who}: the {shared} left over after whole shards are "
             f"shared, up to {k} readers each reading all of one but decoding 1 sample in {k} "
             f"(disk reads grow by {shared * (k - 1) / shards:.0%}, work stays even). Fix: write a "
             f"multiple of {readers} shards (adt data prepare --shards {readers * max(1, shards // readers)}) "
             "or change --loader-workers.")]


def _shared_gpu_warnings(config: RunConfig) -> list[str]:
    """Workers that share a GPU without MPS take turns on it instead of running side by side."""
    if config.mps or config.workers < 2 or config.device == "cpu":
        return []
    gpus = 1 if config.device.startswith("cuda:") else gpu_count()
    if config.workers <= gpus:
        return []
    return [f"{config.workers} workers share {gpus} GPU{'s' if gpus > 1 else ''} without MPS, so they take "
            "turns on it: 0.73x of one process with 2 workers on an H200, 1.01x with MPS "
            "(docs/BENCHMARKS.md, Engine speed). Fix: add --mps (under torchrun: start "
            "`nvidia-cuda-mps-control -d` on each machine)."]


MANY_WORKERS = 6  # from here on the measured cost of staleness is more than a few points
# Points below one process at equal epochs under the default rule, on the two GPU benchmarks (set
# b, set a; 3 seeds, one H200 with --mps; docs/BENCHMARKS.md, Convergence), by (workers, --overlap).
MEASURED_LOSS = {(4, False): "1.1 and 1.6", (8, False): "3.5 and 8.9",
                 (4, True): "2.2 and 3.8", (8, True): "7.9 and 20.0"}


def _many_workers_warnings(config: RunConfig) -> list[str]:
    """Where async still learns well short of one process at equal epochs (docs/BENCHMARKS.md)."""
    if config.workers < MANY_WORKERS:
        return []
    return [f"{config.workers} workers: each adds an update of staleness to every push. With 8, the default "
            f"rule ended {MEASURED_LOSS[8, False]} points below one process at equal epochs on the two GPU "
            f"benchmarks (4 workers: {MEASURED_LOSS[4, False]}; docs/BENCHMARKS.md, Convergence). Fix: 4 "
            "workers or fewer, with --mps where they share a GPU, or more epochs."]


def _overlap_warnings(config: RunConfig) -> list[str]:
    """--overlap's measured cost, said wherever it is asked for with workers."""
    if not (config.overlap and config.workers > 1):
        return []
    return [f"--overlap computes each step on parameters a round of pushes older: with 4 workers the default "
            f"rule ended {MEASURED_LOSS[4, True]} points below one process on the two GPU benchmarks "
            f"({MEASURED_LOSS[4, False]} without --overlap; other rules 16 to 28), with 8 workers "
            f"{MEASURED_LOSS[8, True]} (docs/BENCHMARKS.md, Convergence). It pays only where the round trip "
            "holds the job back. Fix: drop --overlap unless images/s matter more than those points."]


def preflight(config: RunConfig, local_workers: int | None = None) -> PreflightReport:
    """Place the job (writing concrete devices into `config`), then check the run's data end to
    end; raise ConfigError or DataError on the first problem, else report it.

    `local_workers`: this machine's workers, when the job spans machines (adt launch)."""
    start = time.monotonic()
    placement = place(config, local_workers)
    spec = resolve_data(config.data, config.train_url, config.val_url)
    readers = readers_of(config)
    report = PreflightReport(spec, readers)
    classes = spec.classes
    if config.num_classes and config.num_classes != len(classes):
        raise DataError(f"num_classes is {config.num_classes}, but {spec.train.manifest_path} lists "
                        f"{len(classes)} classes. Fix: pass --num-classes {len(classes)}, or 0 to "
                        "take it from the manifest.")
    for name, split in (("train", spec.train), ("val", spec.val)):
        url_spec = getattr(config, f"{name}_url") or str(Path(config.data) / name)
        report.warnings += _check_listed(split, name, url_spec)
        entries = {s["name"]: s for s in split.manifest["shards"]}
        for i, url in enumerate(split.urls):
            # Remote shards: decoding means downloading, so only the first one's samples are read.
            _check_shard(split, url, name, entries[shard_name(url)], spec.image_size, len(classes),
                         decode=i == 0 or not is_remote(url))
        if split.manifest.get("split", name) != name:
            report.warnings.append(f"{name} data {split.manifest_path} was written as the "
                                   f"{split.manifest['split']!r} split.")
    if set(spec.train.urls) & set(spec.val.urls):
        report.warnings.append("validation reads training shards, so its accuracy will look better "
                               "than it is. Fix: point --val-url at separate shards.")
    if config.update_rule == "auto" and config.workers > 0:
        config.update_rule = update_rule_of(config)
        report.rule = (f"update rule: {config.update_rule} (the default for {config.workers} worker"
                       f"{'s' if config.workers != 1 else ''}: docs/BENCHMARKS.md, Convergence)")
    config.augment, why = choose_augment(config.augment, spec.train.manifest)
    report.augment = f"augment: {config.augment} ({why})"
    report.warnings += _reader_warnings(spec.train, readers, config)
    report.warnings += _overlap_warnings(config) + _shared_gpu_warnings(config) + _many_workers_warnings(config)
    report.seconds = round(time.monotonic() - start, 3)
    report.model = check_model(config, len(classes), spec.image_size)
    report.placement = placement.describe()
    report.listeners = run_listeners(config.host, config.port, config.workers)
    return report
