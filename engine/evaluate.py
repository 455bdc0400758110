"""Validation of the global model: every validation sample exactly once, loss and top-1 accuracy;
and the BatchNorm statistics it is validated with."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .data import DataError, ShardStream, Split, make_loader
from .models import normalize


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
                        samples: int, device: torch.device) -> int:
    """Set every BatchNorm's running statistics to the exact mean/variance over `samples`
    training samples at the current weights; returns how many samples it saw.

    Running statistics are an average over past weights (and, async, over several workers'
    copies); while the weights move fast they lag, and validation suffers for it.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    model.train()
    seen = 0
    for images, _ in batches:
        images = images.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            model(normalize(images).contiguous(memory_format=torch.channels_last))
        seen += images.shape[0]
        if seen >= samples:
            break
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
    return seen


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, device: torch.device, loader_workers: int,
             batch_size: int = 256) -> dict[str, Any]:
    """Loss and accuracy over the whole split; raises DataError if any sample is missed or doubled."""
    start = time.monotonic()
    was_training = model.training
    model.eval()
    # No more processes than shards: each extra one would start (a second or so at every epoch's
    # end) only to read a shard another reads too.
    loader_workers = min(loader_workers, len(split.urls))
    stream = ShardStream(split, worker=0, workers=1, loader_workers=loader_workers,
                         batch_size=batch_size, train=False)
    total_loss, correct, count = 0.0, 0, 0
    for images, labels in make_loader(stream, loader_workers):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(normalize(images).contiguous(memory_format=torch.channels_last))
        total_loss += nn.functional.cross_entropy(logits.float(), labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        count += labels.numel()
    model.train(was_training)
    if count != split.num_samples:
        raise DataError(f"validation saw {count} samples but {split.manifest_path} lists "
                        f"{split.num_samples}. Fix: re-create the validation shards.")
    return {"loss": total_loss / count, "acc": correct / count, "count": count,
            "seconds": round(time.monotonic() - start, 3)}
