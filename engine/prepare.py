"""`adt data prepare`: Tiny ImageNet or an ImageFolder tree -> train/val WebDataset shard sets.

Two layouts are recognised (SRC itself, or SRC/tiny-imagenet-200):
- Tiny ImageNet: `wnids.txt`, `words.txt`, `train/<wnid>/images/*.JPEG`, and `val/images/*.JPEG`
  labelled by `val/val_annotations.txt` (filename, wnid, bbox... tab-separated);
- ImageFolder (ImageNet style): `train/<class>/*` and `val/<class>/*`.
One class map (the order of `wnids.txt`, else the sorted train class folders) labels both splits.
Everything is written under `<out>.partial` and renamed to `<out>` at the end, so an interrupted
run never leaves a complete-looking data set behind.
"""

from __future__ import annotations

import io
import math
import os
import random
import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from PIL import Image

from .errors import DataError
from .shards import MANIFEST, encode_jpeg, iter_progress, write_shard_set

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
_PARALLEL_FROM = 5000  # below this many images a process pool costs more than it saves


@dataclass
class Source:
    """A recognised input tree: the class map and the (path, label) items of each split."""

    layout: str
    root: Path
    classes: list[str]
    descriptions: dict[str, str]
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]


@dataclass
class Prepared:
    """What `prepare` wrote: the output directory, layout, counts and the two manifests."""

    out: Path
    layout: str
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        train, val = self.manifests["train"], self.manifests["val"]
        h, w = train["image_size"]
        return [
            f"wrote {self.out} ({self.layout} layout, {len(train['classes'])} classes, {w}x{h})",
            *(f"  {name:5} {m['num_samples']} samples in {len(m['shards'])} shards: {self.out / name}"
              for name, m in (("train", train), ("val", val))),
        ]


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _read_words(path: Path, classes: list[str]) -> dict[str, str]:
    """wnid -> description from a words.txt (`wnid<TAB>description`); {} when absent."""
    if not path.is_file():
        return {}
    wanted = set(classes)
    words: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        wnid, _, text = line.partition("\t")
        if wnid in wanted:
            words[wnid] = text.strip()
    return words


def _need(path: Path, layout: str) -> Path:
    if not path.exists():
        raise DataError(f"{path} is missing, so {path.parent} is not a complete {layout} tree. "
                        "Fix: re-extract the data set or point adt at its top directory.")
    return path


def _tiny_imagenet(root: Path) -> Source:
    layout = "Tiny ImageNet"
    classes = [w.strip() for w in _need(root / "wnids.txt", layout).read_text().split() if w.strip()]
    if len(set(classes)) != len(classes):
        raise DataError(f"{root / 'wnids.txt'} lists a class twice. Fix: re-extract the data set.")
    index = {wnid: i for i, wnid in enumerate(classes)}
    train_dir = _need(root / "train", layout)
    for folder in sorted(p for p in train_dir.iterdir() if p.is_dir()):
        if folder.name not in index:
            raise DataError(f"train folder {folder} is not a class in {root / 'wnids.txt'}. "
                            "Fix: remove the folder or add its wnid to wnids.txt.")
    train = []
    for wnid in classes:
        images = _images_under(_need(train_dir / wnid, layout))
        if not images:
            raise DataError(f"train folder {train_dir / wnid} has no images. Fix: re-extract the data set.")
        train.extend((str(p), index[wnid]) for p in images)
    annotations = _need(root / "val" / "val_annotations.txt", layout)
    val_images = _need(root / "val" / "images", layout)
    val = []
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise DataError(f"{annotations} line {number} is not `filename<TAB>wnid...`. "
                            "Fix: re-extract the data set.")
        name, wnid = parts[0].strip(), parts[1].strip()
        if wnid not in index:
            raise DataError(f"{annotations} line {number}: {name} has class {wnid}, which is not "
                            f"in {root / 'wnids.txt'}. Fix: use the wnids.txt of the same release.")
        val.append((str(_need(val_images / name, layout)), index[wnid]))
    if not val:
        raise DataError(f"{annotations} lists no images. Fix: re-extract the data set.")
    return Source(layout, root, classes, _read_words(root / "words.txt", classes), train, val)


def _image_folder(root: Path) -> Source:
    layout = "ImageFolder"
    train_dir, val_dir = root / "train", _need(root / "val", layout)
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    index = {name: i for i, name in enumerate(classes)}
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "val": []}
    for split, split_dir in (("train", train_dir), ("val", val_dir)):
        for folder in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if folder.name not in index:
                raise DataError(f"{split} folder {folder} is not a class folder of {train_dir}. "
                                "Fix: give both splits the same class folders.")
            splits[split].extend((str(p), index[folder.name]) for p in _images_under(folder))
        if not splits[split]:
            raise DataError(f"{split_dir} has no images in class folders. "
                            f"Fix: put images at {split_dir}/<class>/<image>.")
    return Source(layout, root, classes, _read_words(root / "words.txt", classes),
                  splits["train"], splits["val"])


def find_source(src: str | Path) -> Source:
    """Recognise the layout of `src` (or `src/tiny-imagenet-200`) and list its images."""
    root = Path(src).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"source directory {root} does not exist. Fix: pass the extracted data set.")
    if not (root / "wnids.txt").exists() and (root / "tiny-imagenet-200" / "wnids.txt").exists():
        root = root / "tiny-imagenet-200"
    if (root / "wnids.txt").exists():
        return _tiny_imagenet(root)
    train_dir = root / "train"
    if train_dir.is_dir() and any(p.is_dir() for p in train_dir.iterdir()):
        return _image_folder(root)
    raise DataError(f"{root} is neither Tiny ImageNet ({root / 'wnids.txt'} is missing) nor an "
                    f"ImageFolder tree ({train_dir}/<class>/ is missing). Fix: pass the directory "
                    "that holds wnids.txt, or train/ and val/ with one folder per class.")


def convert_image(path: str, size: int) -> tuple[bytes, tuple[int, int]]:
    """(JPEG bytes, (height, width)) of one image, resized to size x size when size > 0.

    An RGB JPEG already at the target size keeps its original bytes: re-encoding would only
    lose quality. Resizing keeps the aspect ratio (shorter side to `size`, then a centre crop).
    """
    data = Path(path).read_bytes()
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decode fully now, so a corrupt file fails here and not in the middle of training
    except Exception as exc:
        raise DataError(f"image {path} does not decode ({exc}). Fix: delete or replace it.") from exc
    w, h = image.size
    if size and (w, h) != (size, size):
        scale = size / min(w, h)
        rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
        image = image.convert("RGB").resize((rw, rh), Image.Resampling.BICUBIC)
        left, top = (rw - size) // 2, (rh - size) // 2
        image = image.crop((left, top, left + size, top + size))
        return encode_jpeg(image), (size, size)
    if image.format == "JPEG" and image.mode == "RGB":
        return data, (h, w)
    return encode_jpeg(image), (h, w)


def _convert_item(job: tuple[str, int, int]) -> tuple[str, bytes, tuple[int, int], int]:
    path, label, size = job
    jpeg, hw = convert_image(path, size)
    return path, jpeg, hw, label


def _samples(split: str, items: list[tuple[str, int]], size: int, shape: tuple[int, int],
             jobs: int, progress: bool) -> Iterator[tuple[str, bytes, int]]:
    """(key, jpeg, label) in `items` order; checks every image has `shape` (height, width)."""
    work = [(path, label, size) for path, label in items]
    pool = None
    if jobs > 1 and len(work) >= _PARALLEL_FROM:
        pool = _pool(jobs)
        converted: Iterator[Any] = pool.imap(_convert_item, work, chunksize=64)
    else:
        converted = map(_convert_item, work)
    if progress:
        converted = iter_progress(converted, len(work), f"prepare {split}")
    try:
        for i, (path, jpeg, hw, label) in enumerate(converted):
            if hw != shape:
                raise DataError(f"image {path} is {hw[1]}x{hw[0]}, but the first train image is "
                                f"{shape[1]}x{shape[0]}. Fix: pass --size N to resize every image.")
            yield f"{split}_{i:07d}", jpeg, label
    finally:
        if pool is not None:
            pool.terminate()


def _pool(jobs: int) -> Any:
    """Conversion processes that ignore SIGINT: a terminal's Ctrl+C reaches the whole process group,
    and only this process should answer it (it ends the pool), without a traceback per child."""
    if threading.current_thread() is not threading.main_thread():
        return get_context("spawn").Pool(jobs)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited through exec, from birth
    try:
        return get_context("spawn").Pool(jobs)
    finally:
        signal.signal(signal.SIGINT, previous)


def default_shard_count(num_samples: int, workers: int = 2, loader_workers: int = 1) -> int:
    """Enough train shards that every worker x loader process reads whole shards of its own.

    At least 8, at least one per reader, shards of at most ~20k samples, and a multiple of the
    reader count so each reader gets the same number of shards.
    """
    readers = max(1, workers) * max(1, loader_workers)
    shards = max(8, readers, math.ceil(num_samples / 20000))
    return math.ceil(shards / readers) * readers


def _check_out(out: Path, src: Path) -> None:
    """Refuse to replace anything that is not an earlier shard set: `out` is deleted on success."""
    if out == src or out in src.parents or src in out.parents:
        raise DataError(f"output {out} overlaps the source {src}. Fix: pass --out outside the source.")
    if out.exists():
        extra = [p.name for p in out.iterdir()
                 if not (p.name in ("train", "val") and (p / MANIFEST).is_file())]
        if extra:
            raise DataError(f"output {out} exists and is not an adt shard set (it holds {extra[0]}). "
                            "Fix: pass --out to a new directory or remove it.")


def prepare(src: str | Path, out: str | Path, size: int = 0, shards: int = 0, val_shards: int = 0,
            seed: int = 0, workers: int = 2, loader_workers: int = 1, jobs: int = 0,
            progress: bool = True) -> Prepared:
    """Convert `src` to `out/train` and `out/val` shard sets; return what was written.

    `size` > 0 resizes every image to size x size; 0 requires one size throughout. `shards` = 0
    picks `default_shard_count` for `workers` x `loader_workers`. Training samples are shuffled with
    `seed` first: class-sorted shards would feed each async worker a few classes at a time.
    """
    source = find_source(src)
    out = Path(out).expanduser().resolve()
    _check_out(out, source.root)
    train = list(source.train)
    random.Random(seed).shuffle(train)
    shape = (size, size) if size else convert_image(train[0][0], 0)[1]
    shards = shards or default_shard_count(len(train), workers, loader_workers)
    val_shards = val_shards or max(2, loader_workers)
    jobs = jobs or min(8, os.cpu_count() or 1)
    extra = {"source": str(source.root), "layout": source.layout, "seed": seed, "resized": bool(size)}
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    result = Prepared(out, source.layout)
    try:
        for split, items, count in (("train", train, shards), ("val", source.val, val_shards)):
            stream = _samples(split, items, size, shape, jobs, progress)
            result.manifests[split] = write_shard_set(
                partial / split, split, stream, len(items), count, source.classes, shape,
                source.descriptions, extra)
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            os.rename(out, old)
        os.rename(partial, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        # Ctrl-C or a bad image: leave nothing that could be mistaken for a finished data set.
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return result
