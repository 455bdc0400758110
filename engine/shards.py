"""Writing WebDataset shard sets with their manifest, atomically.

A shard set is a directory of `<split>-NNNNNN.tar` files plus `manifest.json`. Each sample is a
key without dots, `jpg` (JPEG bytes) and `cls` (the class index as text). The manifest is written
last and the whole directory is renamed into place, so a half-written set never looks complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import webdataset as wds

from .mirror import ClassMeans

MANIFEST = "manifest.json"
FORMAT = "adt-shards/1"


def encode_jpeg(image: Any, quality: int = 90) -> bytes:
    """A PIL image as JPEG bytes."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_shard_set(
    out_dir: str | Path,
    split: str,
    samples: Iterable[tuple[str, bytes, int]],
    num_samples: int,
    num_shards: int,
    classes: list[str],
    image_size: tuple[int, int],
    descriptions: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write (key, jpeg, label) samples round-robin into `num_shards` tars; return the manifest.

    The samples go to `<out_dir>.partial` first, which is renamed to `out_dir` once the manifest is
    in it; an old `out_dir` is replaced only then.
    """
    out_dir = Path(out_dir)
    tmp_dir = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    num_shards = max(1, min(num_shards, num_samples))
    names = [f"{split}-{i:06d}.tar" for i in range(num_shards)]
    # mtime=0: the same samples give byte-identical shards, so content hashes are reproducible.
    writers = [wds.TarWriter(str(tmp_dir / name), mtime=0) for name in names]
    counts = [0] * num_shards
    keys: set[str] = set()
    means = ClassMeans() if split == "train" else None  # does a flip keep labels? (engine/mirror.py)
    for i, (key, jpeg, label) in enumerate(samples):
        if "." in key or key in keys:
            raise ValueError(f"sample key {key!r} has a dot or is not unique")
        if not 0 <= label < len(classes):
            raise ValueError(f"sample {key!r} has label {label} outside [0, {len(classes)})")
        keys.add(key)
        writers[i % num_shards].write({"__key__": key, "jpg": jpeg, "cls": str(label).encode()})
        counts[i % num_shards] += 1
        if means is not None:
            means.add(jpeg, label)
    for writer in writers:
        writer.close()
    if sum(counts) != num_samples:
        raise ValueError(f"expected {num_samples} samples, got {sum(counts)}")
    shards = []
    for name, count in zip(names, counts, strict=True):
        path = tmp_dir / name
        shards.append({"name": name, "count": count, "bytes": path.stat().st_size,
                       "sha256": _sha256(path)})
    content = hashlib.sha256(json.dumps([classes, shards], sort_keys=True).encode()).hexdigest()
    manifest = {
        "format": FORMAT,
        "split": split,
        "classes": classes,
        "descriptions": descriptions or {},
        "image_size": list(image_size),
        "num_samples": num_samples,
        "shards": shards,
        "content_hash": content,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **({"mirror_asymmetry": means.asymmetry()} if means is not None else {}),
        **(extra or {}),
    }
    with open(tmp_dir / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.rename(tmp_dir, out_dir)
    return manifest


def iter_progress(items: Iterable[Any], total: int, label: str, stream: Any = None) -> Iterator[Any]:
    """Yield items while drawing a one-line progress bar on a terminal (plain lines otherwise)."""
    import sys

    stream = stream or sys.stderr
    tty = stream.isatty()
    step = max(1, total // (100 if tty else 4))
    for i, item in enumerate(items, 1):
        yield item
        if i % step == 0 or i == total:
            if tty:
                filled = int(30 * i / total)
                stream.write(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {i}/{total}")
                if i == total:
                    stream.write("\n")
            else:
                stream.write(f"{label}: {i}/{total}\n")
            stream.flush()
