"""The built-in data: a learnable, ImageNet-like synthetic image set written as WebDataset shards.

Each class has its own colour, texture (a sinusoidal grating of class-specific orientation and
frequency) and blob shape; every image jitters phase, position, brightness and adds noise, so a
small CNN must learn real features to score well above chance, and does so in about a minute.
"""

from __future__ import annotations

import math
import multiprocessing
from pathlib import Path

import numpy as np
from PIL import Image

from .shards import encode_jpeg, iter_progress, write_shard_set

# Names in the spirit of ImageNet wnids so the whole pipeline sees realistic class maps.
_NAMES = [f"n{1440764 + 7919 * i:08d}" for i in range(1000)]


def _class_style(label: int, num_classes: int, rng: np.random.Generator) -> dict[str, float]:
    return {
        "hue": label / num_classes,
        "angle": math.pi * ((label * 0.618) % 1.0),
        "freq": 2.0 + 5.0 * ((label * 0.381) % 1.0),
        "blob": float(label % 3),
        "sat": 0.35 + 0.4 * rng.random(),
    }


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def make_image(label: int, num_classes: int, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of class `label`: colour + oriented grating + a class-shaped blob, all jittered."""
    style = _class_style(label, num_classes, np.random.default_rng(label))
    y, x = np.mgrid[0:size, 0:size] / size
    angle = style["angle"] + rng.normal(0, 0.35)
    phase = rng.uniform(0, 2 * math.pi)
    grating = 0.5 + 0.5 * np.sin(2 * math.pi * style["freq"] * (x * math.cos(angle) + y * math.sin(angle)) + phase)
    hue = (style["hue"] + rng.normal(0, 0.09)) % 1.0
    base = _hsv_to_rgb(hue, style["sat"], rng.uniform(0.55, 0.95))
    other = _hsv_to_rgb((hue + 0.5) % 1.0, 0.3, rng.uniform(0.2, 0.5))
    img = grating[..., None] * base + (1 - grating[..., None]) * other
    cx, cy, r = rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), rng.uniform(0.12, 0.25)
    if style["blob"] == 0:
        mask = (x - cx) ** 2 + (y - cy) ** 2 < r**2
    elif style["blob"] == 1:
        mask = (abs(x - cx) < r) & (abs(y - cy) < r)
    else:
        mask = abs(x - cx) + abs(y - cy) < r
    img[mask] = img[mask] * 0.4 + 0.6 * _hsv_to_rgb((hue + 0.25) % 1.0, 0.8, 0.9)
    # A blob of a random other class's colour, and heavy noise, keep the task from being trivial.
    dx, dy = rng.uniform(0.1, 0.9, 2)
    decoy = (x - dx) ** 2 + (y - dy) ** 2 < rng.uniform(0.01, 0.04)
    img[decoy] = _hsv_to_rgb(rng.random(), 0.8, 0.9)
    img = img + rng.normal(0, 0.25, img.shape)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))


def _make_sample(task: tuple[str, int, int, int, int, int]) -> tuple[str, bytes, int]:
    split, index, label, num_classes, size, seed = task
    rng = np.random.default_rng((seed, index))  # per-sample seed: the same data with any `jobs`
    return f"{split}_{index:07d}", encode_jpeg(make_image(label, num_classes, size, rng)), label


def write_synthetic(
    out_dir: str | Path,
    num_classes: int = 10,
    image_size: int = 32,
    train_samples: int = 6000,
    val_samples: int = 1000,
    train_shards: int = 8,
    val_shards: int = 2,
    seed: int = 0,
    progress: bool = True,
    jobs: int = 1,
) -> Path:
    """Write `out_dir/train` and `out_dir/val` shard sets with manifests; return `out_dir`."""
    if num_classes > len(_NAMES):
        raise ValueError(f"at most {len(_NAMES)} classes")
    out_dir = Path(out_dir)
    classes = _NAMES[:num_classes]
    descriptions = {name: f"synthetic class {i}" for i, name in enumerate(classes)}
    for split, count, shards, split_seed in (
        ("train", train_samples, train_shards, seed),
        ("val", val_samples, val_shards, seed + 1),
    ):
        rng = np.random.default_rng(split_seed)
        labels = rng.permutation(np.arange(count) % num_classes)  # balanced, shuffled

        tasks = [(split, i, int(label), num_classes, image_size, split_seed) for i, label in enumerate(labels)]

        def samples(tasks=tasks):
            if jobs <= 1:
                yield from map(_make_sample, tasks)
                return
            with multiprocessing.get_context("fork").Pool(jobs) as pool:
                yield from pool.imap(_make_sample, tasks, chunksize=256)

        stream = iter_progress(samples(), count, f"synthetic {split}") if progress else samples()
        write_shard_set(out_dir / split, split, stream, count, shards, classes,
                        (image_size, image_size), descriptions, {"source": "adt synthetic", "seed": seed})
    return out_dir
