"""Does a horizontal flip keep an image's label? Measured on the data, so `--augment auto` can
flip photographs and leave digits and text alone.

A class whose objects appear facing either way (a photographed dog, car or mushroom) has a
mirror-symmetric mean image; a class of digits or letters does not (a mean "3" flipped is no
"3"). The measure: over all classes, the share of the class means' own signal (mean minus the
mean of all classes) that flipping changes, with the sampling noise of the means removed (it is
estimated from two halves of each class). About 0 for classes that look the same mirrored, 1
and more for classes that look mirrored like another class or like nothing.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

SIDE = 16  # the means are compared at 16x16 grey: the layout of a class, not its texture
ASYMMETRIC = 0.3  # at or above: flipping changes the classes (digits: 0.65; synthetic: 0)
PER_CLASS = 40  # images per class to measure on: enough for stable means, a second on 200 classes


def small_grey(jpeg: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(jpeg)) as image:
        return np.asarray(image.convert("L").resize((SIDE, SIDE), Image.Resampling.BILINEAR), np.float64)


class ClassMeans:
    """Collects up to `per_class` small grey images of each class while a shard set is written."""

    def __init__(self, per_class: int = PER_CLASS) -> None:
        self.per_class = per_class
        self.by_class: dict[int, list[np.ndarray]] = {}

    def add(self, jpeg: bytes, label: int) -> None:
        images = self.by_class.setdefault(label, [])
        if len(images) < self.per_class:
            images.append(small_grey(jpeg))

    def asymmetry(self) -> float | None:
        """The asymmetry of the class means; None when no class has the four images the noise
        estimate needs."""
        by_class = {c: images for c, images in self.by_class.items() if len(images) >= 4}
        if not by_class:
            return None
        overall = np.mean([np.mean(images, axis=0) for images in by_class.values()], axis=0)
        changed = signal = noise = 0.0
        for images in by_class.values():
            half = len(images) // 2
            a, b = np.mean(images[:half], axis=0), np.mean(images[half:2 * half], axis=0)
            own = (a + b) / 2 - overall
            changed += float(np.sum((own - own[:, ::-1]) ** 2))
            signal += 2 * float(np.sum(own ** 2))
            # The halves differ by noise alone; of the full mean's noise, flipping shows the same
            # amount in `changed` as in `signal`: (a - b)^2 / 4 per pixel, twice.
            noise += 2 * float(np.sum((a - b) ** 2)) / 4
        if signal - noise <= 0:
            return 0.0  # no class differs from the others beyond noise: nothing a flip could break
        return round(max(0.0, changed - noise) / (signal - noise), 3)


def choose_augment(augment: str, manifest: dict[str, Any]) -> tuple[str, str]:
    """(the augmentation to train with, why) for the configured one; `auto` reads the training
    manifest's measure."""
    if augment != "auto":
        return augment, "as configured"
    measured = manifest.get("mirror_asymmetry")
    if measured is None:
        return "flip-crop", ("the data's manifest does not measure its mirror symmetry (it was written "
                             "by another tool or an older adt); for digits or text pass --augment crop")
    if measured >= ASYMMETRIC:
        return "crop", f"no flip: a flip changes {measured:.2f} of the class means' signal"
    return "flip-crop", f"a flip changes {measured:.2f} of the class means' signal"
