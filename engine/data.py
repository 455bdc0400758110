"""WebDataset input: shard URLs, manifests, and the split of shards among readers.

A *reader* is one DataLoader process of one worker. With R readers and S shards, reader r reads
shards r, r+R, r+2R, ... of the first S - (S mod R) whole; the S mod R shards left over are shared
by all readers: the readers that share one take every k-th sample of it (k = how many share), so
they read the whole shard but decode only their own samples. Every reader's share is then the
same within a fraction of one shard (16 shards over 12 readers: 1 1/3 each, where whole shards
alone gave two workers of 6 readers 10 and 6), and an epoch sees every training sample exactly
once across all workers.

A shard is a local path or a remote URL (`http(s)://`, `pipe:COMMAND`; engine/remote.py opens them).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import random
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import braceexpand
import numpy as np
import torch
from PIL import Image
from webdataset.tariterators import group_by_keys

from .augment import augment as augmented
from .errors import DataError
from .mirror import choose_augment
from .remote import (
    ShardStat,
    folder_of,
    is_pipe,
    is_remote,
    manifest_location,
    missing_program,
    open_shard,
    read_small,
    shard_name,
    stat_http,
    why,
)
from .shards import MANIFEST
from .tarstream import TarFormatError, tar_files

__all__ = ["DataError"]  # re-exported: callers catch engine.data.DataError


def expand_urls(spec: str) -> list[str]:
    """`file:dir/train-{000000..000003}.tar`, a plain path or a directory -> absolute tar paths;
    `http(s)://...` and `pipe:...` URLs are brace-expanded as they are."""
    spec = spec.strip()
    spec = spec.removeprefix("file:")
    if is_remote(spec):
        return list(braceexpand.braceexpand(spec))
    if "://" in spec:
        raise DataError(f"data URL {spec!r} has a scheme adt cannot read. Fix: pass a local path, "
                        "an http(s):// URL, or pipe:COMMAND that writes the shard to stdout.")
    paths: list[str] = []
    for part in braceexpand.braceexpand(spec):
        path = Path(part).expanduser()
        if path.is_dir():
            paths.extend(str(p.resolve()) for p in sorted(path.glob("*.tar")))
        else:
            paths.append(str(path.resolve()))
    return paths


@dataclass
class Split:
    """One split's shards and manifest."""

    urls: list[str]
    manifest: dict[str, Any]
    manifest_path: str  # a path, or for remote shards the URL (or pipe: command) it was read from
    remote: dict[str, ShardStat] = field(default_factory=dict)  # http(s) shards: what the server said

    @property
    def num_samples(self) -> int:
        names = {shard_name(u) for u in self.urls}
        return sum(s["count"] for s in self.manifest["shards"] if s["name"] in names)

    @property
    def folder(self) -> str:
        """Where the shards are, for people."""
        return folder_of(self.manifest_path)


@dataclass
class DataSpec:
    train: Split
    val: Split

    @property
    def classes(self) -> list[str]:
        return self.train.manifest["classes"]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train.manifest["image_size"])  # type: ignore[return-value]

    def fingerprint(self) -> str:
        """Manifest hashes plus shard names and sizes: identical data gives an identical print.

        Remote shards are not hashed (that would mean downloading them): they count by URL, the
        size the server reports and its ETag where it gives one."""
        parts = []
        for split in (self.train, self.val):
            parts.append(split.manifest.get("content_hash", ""))
            for url in split.urls:
                if is_remote(url):
                    stat = split.remote.get(url, ShardStat(None))
                    parts.append(f"{url}:{stat.size}:{stat.etag}")
                else:
                    parts.append(f"{Path(url).name}:{os.path.getsize(url)}")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """The shards, the fingerprint, and where the data came from (what the manifest says: the
        built-in generator and its seed, a prepared set's name): what one run is compared on."""
        manifest = self.train.manifest
        origin = {k: manifest[k] for k in ("source", "seed") if k in manifest}
        return {"train": self.train.urls, "val": self.val.urls, "fingerprint": self.fingerprint(),
                "image_size": list(self.image_size), **origin}


def load_split(spec: str, name: str) -> Split:
    """Expand a split's URL and check every shard against the manifest beside it."""
    urls = expand_urls(spec)
    if not urls:
        raise DataError(f"{name} data {spec!r} matches no .tar file. "
                        f"Fix: pass an existing shard directory or URL, or run `adt data synth`.")
    if any(is_remote(u) != is_remote(urls[0]) for u in urls):
        raise DataError(f"{name} data {spec!r} mixes local and remote shards. Fix: one kind per split.")
    remote: dict[str, ShardStat] = {}
    if is_remote(urls[0]):
        remote = _check_remote(urls, name, spec)
    else:
        for url in urls:
            if not os.path.isfile(url):
                raise DataError(f"{name} shard {url} does not exist (from {spec!r}). "
                                "Fix: check the path and the brace range.")
            if os.path.getsize(url) == 0:
                raise DataError(f"{name} shard {url} is empty. Fix: re-create the shard set.")
    try:
        manifest_path = manifest_location(urls[0])
    except DataError as exc:
        raise DataError(f"{name} {exc}") from None
    manifest = _read_manifest(manifest_path, name)
    listed = {s["name"] for s in manifest["shards"]}
    for url in urls:
        if manifest_location(url) != manifest_path:
            raise DataError(f"{name} shard {url} is not in {folder_of(manifest_path)}, the folder of "
                            "the first shard. Fix: keep one split's shards in one folder.")
        if shard_name(url) not in listed:
            raise DataError(f"{name} shard {url} is not listed in {manifest_path}. "
                            "Fix: re-create the shard set or correct the URL.")
    return Split(urls, manifest, manifest_path, remote)


def _read_manifest(location: str, name: str) -> dict[str, Any]:
    if not is_remote(location) and not os.path.isfile(location):
        raise DataError(f"{name} shards in {folder_of(location)} have no {MANIFEST}. "
                        "Fix: write shards with `adt data synth` or `adt data prepare`.")
    try:
        text = read_small(location)
    except (OSError, ValueError) as exc:
        raise DataError(f"{name} shards have no readable {MANIFEST} at {location} ({why(exc)}). Fix: "
                        f"serve the {MANIFEST} that `adt data synth` or `adt data prepare` wrote beside "
                        "the shards.") from None
    try:
        manifest = json.loads(text)
        [s["name"] for s in manifest["shards"]]  # what every reader looks up: missing is invalid
        manifest["classes"], manifest["image_size"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{location} is not a valid manifest ({exc!r}). "
                        "Fix: re-create the shard set.") from exc
    return manifest


def _check_remote(urls: list[str], name: str, spec: str) -> dict[str, ShardStat]:
    """Every http(s) shard answers with its size (a few HEADs at a time); pipe: programs exist."""
    if is_pipe(urls[0]):
        program = missing_program(urls[0])
        if program:
            raise DataError(f"{name} shards are read by `{program}` ({urls[0]!r}), which is not "
                            f"installed here (not on PATH). Fix: install {program} or use another command.")
        return {}

    def stat(url: str) -> ShardStat | BaseException:
        try:
            return stat_http(url)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            return exc

    stats: dict[str, ShardStat] = {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        for url, result in zip(urls, pool.map(stat, urls), strict=True):
            if isinstance(result, BaseException):
                raise DataError(f"{name} shard {url} cannot be reached: {why(result)} (from {spec!r}). "
                                "Fix: check the URL and its brace range, and that the server is up "
                                f"and serves the shard (curl -I '{url}').")
            if result.size == 0:
                raise DataError(f"{name} shard {url} is empty. Fix: re-create the shard set.")
            stats[url] = result
    return stats


def resolve_data(data: str, train_url: str = "", val_url: str = "") -> DataSpec:
    """Find both splits: explicit URLs, or `data/train` and `data/val` of a data directory."""
    if not train_url:
        root = Path(data)
        if not root.is_dir():
            raise DataError(f"data directory {root.resolve()} does not exist. Fix: run "
                            "`adt data synth` or pass --data DIR (holding train/ and val/).")
        train_url, val_url = str(root / "train"), str(root / "val")
    spec = DataSpec(load_split(train_url, "train"), load_split(val_url, "val"))
    if spec.train.manifest["classes"] != spec.val.manifest["classes"]:
        raise DataError(f"the class maps differ: {spec.train.manifest_path} and "
                        f"{spec.val.manifest_path} list different classes (or orders), so labels "
                        "would mean different things. Fix: write both splits with one class map.")
    if spec.train.manifest["image_size"] != spec.val.manifest["image_size"]:
        raise DataError(f"image sizes differ between {spec.train.manifest_path} and "
                        f"{spec.val.manifest_path}. Fix: write both splits at one size.")
    return spec


def reader_plan(urls: list[str], reader: int, readers: int) -> list[tuple[str, int, int]]:
    """One reader's (shard, stride, offset) parts: of each shard it keeps the samples whose index
    % stride == offset (stride 1: the whole shard)."""
    whole = len(urls) - len(urls) % readers
    parts = [(url, 1, 0) for url in urls[reader:whole:readers]]
    left = urls[whole:]
    if left:
        shared = reader % len(left)
        sharers = list(range(shared, readers, len(left)))
        parts.append((left[shared], len(sharers), sharers.index(reader)))
    return parts


def worker_shards(urls: list[str], worker: int, workers: int, loader_workers: int) -> list[str]:
    """The shards one worker reads, in the PS's order (its loader processes split them further)."""
    per_worker = max(1, loader_workers)
    mine: set[str] = set()
    for local in range(per_worker):
        mine.update(url for url, _, _ in reader_plan(urls, worker * per_worker + local,
                                                     workers * per_worker))
    return [u for u in urls if u in mine]


def shard_samples(urls: list[str]) -> Iterator[dict[str, Any]]:
    """The samples of each shard in turn: dicts of `__key__`, `__url__` and one entry per extension.

    A shard that cannot be read (after remote retries) raises DataError naming it: never skipped.
    """
    for url in urls:
        yield from group_by_keys(_shard_files(url))


def _shard_files(url: str) -> Iterator[dict[str, Any]]:
    with open_shard(url) as stream:
        try:
            for name, data in tar_files(stream):
                yield {"fname": name, "data": data, "__url__": url}
        except TarFormatError as exc:
            raise DataError(f"shard {url} is not a readable tar file ({exc}). "
                            "Fix: re-create the shard set.") from None


def decode_sample(sample: dict[str, Any], size: tuple[int, int], num_classes: int) -> tuple[np.ndarray, int]:
    """JPEG bytes + label text -> HWC uint8 array and int, checked against the manifest."""
    key = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
    if "jpg" not in sample or "cls" not in sample:
        raise DataError(f"sample {key} lacks 'jpg' or 'cls'. Fix: re-create the shard set.")
    try:
        image = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
    except Exception as exc:
        raise DataError(f"sample {key}: image does not decode ({exc}). Fix: re-create the shard.") from exc
    if image.size != (size[1], size[0]):
        raise DataError(f"sample {key} is {image.size[0]}x{image.size[1]}, but the manifest says "
                        f"{size[1]}x{size[0]}. Fix: re-create the shard set at one size.")
    label = int(sample["cls"])
    if not 0 <= label < num_classes:
        raise DataError(f"sample {key} has label {label}, outside [0, {num_classes}). "
                        "Fix: re-create the shards with the manifest's class map.")
    return np.asarray(image), label


class ShardStream(torch.utils.data.IterableDataset):
    """Batches of (uint8 NCHW images, int64 labels) from this worker's share of the shards.

    `worker`/`workers` say which adt worker this is; DataLoader processes split that share further.
    """

    def __init__(self, split: Split, worker: int, workers: int, loader_workers: int,
                 batch_size: int, train: bool, seed: int = 0, augment: str = "none") -> None:
        self.split = split
        self.worker, self.workers = worker, workers
        self.loader_workers = max(1, loader_workers)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        # `auto` is settled by the preflight; a job started without one settles it the same way here.
        self.augment = choose_augment(augment, split.manifest)[0] if train else "none"
        self.epoch = 0
        self.size = tuple(split.manifest["image_size"])
        self.num_classes = len(split.manifest["classes"])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def reader_index(self) -> int:
        info = torch.utils.data.get_worker_info()
        return self.worker * self.loader_workers + (info.id if info else 0)

    def samples(self) -> Iterator[tuple[np.ndarray, int]]:
        reader = self.reader_index()
        parts = reader_plan(self.split.urls, reader, self.workers * self.loader_workers)
        rng = random.Random(self.seed * 1_000_003 + self.epoch * 1009 + reader)
        if self.train:
            parts = rng.sample(parts, len(parts))
        for url, stride, offset in parts:
            for index, sample in enumerate(shard_samples([url])):
                if index % stride == offset:
                    image, label = decode_sample(sample, self.size, self.num_classes)
                    yield augmented(image, rng, self.augment), label

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        samples = self.samples()
        if self.train:
            samples = _shuffled(samples, 1000, random.Random(self.seed + self.epoch))
        return self._batches(samples)

    def head(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches in shard order (shards shuffled, samples not): a quick sample of the split."""
        return self._batches(self.samples())

    def _batches(self, samples: Iterator[tuple[np.ndarray, int]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batch: list[tuple[np.ndarray, int]] = []
        for item in samples:
            batch.append(item)
            if len(batch) == self.batch_size:
                yield _collate(batch)
                batch = []
        if batch:
            yield _collate(batch)


class Head(torch.utils.data.IterableDataset):
    """A stream's `head()` for a DataLoader, so that loader processes read it in parallel."""

    def __init__(self, stream: ShardStream) -> None:
        self.stream = stream

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.stream.head()


def _shuffled(items: Iterator[Any], buffer_size: int, rng: random.Random) -> Iterator[Any]:
    buffer: list[Any] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= buffer_size:
            yield buffer.pop(rng.randrange(len(buffer)))
    rng.shuffle(buffer)
    yield from buffer


def _collate(batch: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.stack([image for image, _ in batch])).permute(0, 3, 1, 2)
    labels = torch.tensor([label for _, label in batch], dtype=torch.int64)
    return images.contiguous(), labels


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class Loader(torch.utils.data.DataLoader):
    """A DataLoader whose processes ignore the job's stop signals from birth.

    A stop signals the whole process group. Loader processes must not die of it mid-batch (their
    parent finishes its step and then shuts them down itself), nor in the instant between their
    fork and their init function: the parent then took the dead loader for a lost PS and exited 1.
    So they are started with those signals blocked, and unblock them once they ignore them."""

    def __iter__(self) -> Any:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return super().__iter__()  # forks the loader processes (and the pin-memory thread)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a signal held meanwhile arrives now


def make_loader(stream: ShardStream | Head, loader_workers: int, pin_memory: bool = False) -> Loader:
    """A DataLoader over a ShardStream (which batches itself); 0 loader workers decodes inline."""
    return Loader(
        stream, batch_size=None, num_workers=loader_workers, pin_memory=pin_memory,
        prefetch_factor=4 if loader_workers else None,
        worker_init_fn=_ignore_stop_signals if loader_workers else None,
    )


def _ignore_stop_signals(_worker_id: int) -> None:
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # one held since the fork is dropped
