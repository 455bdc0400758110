"""What the model is trained and validated on: augmentation for training only, and BatchNorm
statistics recomputed from the data before validation."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from engine.augment import augment
from engine.data import Head, ShardStream, make_loader, resolve_data
from engine.evaluate import recompute_batchnorm
from engine.models import normalize


def samples(split, train: bool, augment: str) -> list[tuple[np.ndarray, int]]:
    return list(ShardStream(split, 0, 1, 0, 8, train=train, seed=3, augment=augment).samples())


def test_validation_is_never_augmented_and_training_is(tiny_data):
    spec = resolve_data(str(tiny_data))
    asked, plain = samples(spec.val, False, "flip-crop"), samples(spec.val, False, "none")
    assert len(asked) == len(plain) == spec.val.num_samples
    assert all(a[1] == b[1] and np.array_equal(a[0], b[0]) for a, b in zip(asked, plain, strict=True))
    augmented, original = samples(spec.train, True, "flip-crop"), samples(spec.train, True, "none")
    assert [a[1] for a in augmented] == [b[1] for b in original]  # same samples, same labels
    assert all(a[0].shape == b[0].shape and a[0].dtype == np.uint8 for a, b in zip(augmented, original, strict=True))
    changed = sum(not np.array_equal(a[0], b[0]) for a, b in zip(augmented, original, strict=True))
    assert changed > 0.8 * len(original), changed


def test_flip_crop_keeps_the_size_for_small_and_large_images():
    rng = random.Random(0)
    for size in (16, 64, 160):  # pad-and-crop up to 96 px, random-resized crop above
        image = np.random.default_rng(size).integers(0, 256, (size, size, 3), dtype=np.uint8)
        out = augment(image, rng, "flip-crop")
        assert out.shape == image.shape and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]


def test_small_images_are_padded_with_zeros_and_cropped_back():
    """flip_crop's one-copy crop is the textbook recipe: np.pad by 1/8, a random crop, a flip."""
    image = np.random.default_rng(1).integers(1, 256, (16, 21, 3), dtype=np.uint8)
    ours, textbook = random.Random(5), random.Random(5)
    for _ in range(200):
        pad = 2
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
        y, x = textbook.randint(0, 2 * pad), textbook.randint(0, 2 * pad)
        crop = padded[y:y + 16, x:x + 21]
        expected = crop[:, ::-1] if textbook.random() < 0.5 else crop
        assert np.array_equal(augment(image, ours, "flip-crop"), expected)


def test_batchnorm_recompute_sets_the_statistics_of_the_given_samples():
    model = nn.Sequential(nn.BatchNorm2d(3))
    model[0].running_mean.fill_(5.0)  # stale statistics from other weights
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 256, (8, 3, 4, 4), dtype=torch.uint8, generator=gen), torch.zeros(8))
               for _ in range(4)]
    seen = recompute_batchnorm(model, iter(batches), 24, torch.device("cpu"))
    assert seen == 24  # three batches of 8, then it stops
    expected = torch.cat([normalize(images) for images, _ in batches[:3]]).mean((0, 2, 3))
    assert torch.allclose(model[0].running_mean, expected, atol=1e-5)
    assert model[0].momentum == 0.1 and model.training  # put back as it was


def test_batchnorm_samples_come_from_loader_processes_and_are_the_same_each_time(tiny_data):
    """The PS reads its BatchNorm samples through loader processes (each reader the head of its
    shards): the same distinct samples for the same version, other samples for the next one."""
    train = resolve_data(str(tiny_data)).train
    stream = ShardStream(train, 0, 1, 2, 32, train=True, seed=1)

    def head(version: int) -> list[bytes]:
        stream.set_epoch(version)
        images = [batch[0] for _, batch in zip(range(4), make_loader(Head(stream), 2), strict=False)]
        return [image.numpy().tobytes() for image in torch.cat(images)]

    first = head(7)
    assert len(first) == len(set(first)) == 4 * 32
    assert head(7) == first
    assert head(8) != first
