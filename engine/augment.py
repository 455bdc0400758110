"""Training augmentation on decoded uint8 images, in the loader processes (never for validation).

`flip-crop`: a random crop and a horizontal flip; `crop`: the crop alone, for data a mirror
changes (digits, text; `auto` decides from the data, engine/mirror.py). Small images (up to 96 px, e.g. Tiny ImageNet's
64) are padded by 1/8 of their side with zeros and cropped back to size, the usual CIFAR/Tiny
ImageNet recipe; larger ones take a random-resized crop (8-100% of the area, aspect 3/4-4/3)
scaled back to the input size, the usual ImageNet recipe.
"""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image

SMALL = 96  # the largest side that gets pad-and-crop instead of random-resized crop


def augment(image: np.ndarray, rng: random.Random, kind: str) -> np.ndarray:
    """One HWC uint8 image -> the `kind` augmentation of it, of the same size."""
    if kind == "none":
        return image
    out = crop(image, rng)
    if kind == "flip-crop" and rng.random() < 0.5:
        return np.ascontiguousarray(out[:, ::-1])
    return out


def crop(image: np.ndarray, rng: random.Random) -> np.ndarray:
    h, w = image.shape[:2]
    if max(h, w) <= SMALL:
        pad = max(1, h // 8)
        y, x = rng.randint(0, 2 * pad), rng.randint(0, 2 * pad)
        return _shifted(image, y - pad, x - pad)
    return _random_resized_crop(image, rng)


def _shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The crop at (dy, dx) of the image padded with zeros; one copy instead of np.pad's two
    (np.pad took 13% of a 64 px loader process's time)."""
    h, w = image.shape[:2]
    out = np.zeros_like(image)
    out[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = \
        image[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)]
    return out


def _random_resized_crop(image: np.ndarray, rng: random.Random) -> np.ndarray:
    h, w = image.shape[:2]
    for _ in range(10):
        area = h * w * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            y, x = rng.randint(0, h - ch), rng.randint(0, w - cw)
            crop = Image.fromarray(image[y:y + ch, x:x + cw])
            return np.asarray(crop.resize((w, h), Image.BILINEAR))
    return image  # no crop fit (extreme aspect ratio): keep the whole image
