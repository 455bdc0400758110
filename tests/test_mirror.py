"""`--augment auto`: the flip is left out for data a mirror changes, measured when shards are written."""

from __future__ import annotations

import numpy as np
from PIL import Image

from engine.mirror import ASYMMETRIC, choose_augment
from engine.shards import encode_jpeg, write_shard_set
from engine.synth import write_synthetic


def _glyphs(out, per_class: int = 30):
    """Ten 'characters': class k is a bar in column 2k+1 of 24, its mirror in another column, so a
    flipped image looks like another class (as a flipped digit does)."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(10 * per_class):
        label = i % 10
        image = rng.integers(0, 40, (24, 24), dtype=np.uint8)
        image[4:20, 2 * label + 1] = 255
        image[4:8, 2 * label + 1:min(24, 2 * label + 6)] = 255  # a serif to the right: not symmetric
        samples.append((f"train_{i:05d}", encode_jpeg(Image.fromarray(image).convert("RGB")), label))
    return write_shard_set(out, "train", iter(samples), len(samples), 2, [f"c{k}" for k in range(10)], (24, 24))


def test_glyphs_are_trained_without_the_flip(tmp_path):
    manifest = _glyphs(tmp_path / "train")
    assert manifest["mirror_asymmetry"] >= ASYMMETRIC
    augment, why = choose_augment("auto", manifest)
    assert augment == "crop" and "no flip" in why


def test_photograph_like_data_keeps_the_flip(tmp_path):
    write_synthetic(tmp_path, num_classes=10, image_size=16, train_samples=400, val_samples=20,
                    progress=False)
    import json

    manifest = json.loads((tmp_path / "train" / "manifest.json").read_text())
    assert manifest["mirror_asymmetry"] < ASYMMETRIC
    assert choose_augment("auto", manifest)[0] == "flip-crop"
    assert "mirror_asymmetry" not in json.loads((tmp_path / "val" / "manifest.json").read_text())


def test_a_manifest_without_the_measure_flips_and_says_so_and_a_choice_is_kept():
    augment, why = choose_augment("auto", {})
    assert augment == "flip-crop" and "--augment crop" in why
    assert choose_augment("none", {"mirror_asymmetry": 0.9}) == ("none", "as configured")
