"""The worker loop: pull parameters, compute a gradient on a batch, push it, never wait for peers.

The same loop drives `--workers 0` through an in-process client, so the baseline and the async
run share model, data, optimizer and evaluation code.
"""

from __future__ import annotations

import os
import socket
import statistics
import threading
import time
from typing import Any

import torch
from torch import nn

from .config import RunConfig
from .data import ShardStream, Split, make_loader
from .fingerprint import startup_fingerprint
from .models import build_model, normalize
from .server import FlatModel, resolve_device


class Meter:
    """Running loss/accuracy/throughput and step timings between two metric reports."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss = self.correct = self.count = 0.0
        self.timing: dict[str, list[float]] = {"data": [], "compute": [], "push_pull": []}
        self.since = time.monotonic()

    def add(self, loss: float, correct: int, n: int, data_s: float, compute_s: float, push_s: float) -> None:
        self.loss += loss * n
        self.correct += correct
        self.count += n
        for key, value in (("data", data_s), ("compute", compute_s), ("push_pull", push_s)):
            self.timing[key].append(1000 * value)

    def report(self, epoch: int, step: int, samples: int) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.since, 1e-9)
        metrics = {
            "epoch": epoch, "step": step, "samples": samples,
            "loss": self.loss / max(self.count, 1), "acc": self.correct / max(self.count, 1),
            "images_per_s": round(self.count / elapsed, 1),
            "timing": {k: round(statistics.median(v), 3) for k, v in self.timing.items() if v},
        }
        self.reset()
        return metrics


def worker_info(worker: int, rank: int, device: torch.device, shards: list[str], loader_workers: int) -> dict[str, Any]:
    return {"rank": rank, "pid": os.getpid(), "host": socket.gethostname(), "device": str(device),
            "code_fingerprint": startup_fingerprint()["fingerprint"], "shards": shards,
            "loader_workers": loader_workers}


def run_worker(client: Any, config: RunConfig, train: Split, worker: int, workers: int, rank: int,
               stop: threading.Event, model: FlatModel | None = None) -> str:
    """Train until the PS says stop, the epochs run out, or `stop` is set; returns why it ended."""
    device = resolve_device(config.device)
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
        device = torch.device("cuda", worker % torch.cuda.device_count())  # one worker per GPU
    stream = ShardStream(train, worker, workers, config.loader_workers, config.batch_size,
                         train=True, seed=config.seed)
    shards = [u for u in train.urls if u in _my_shards(stream)]
    reply = client.register(worker_info(worker, rank, device, shards, config.loader_workers))
    flat = model or FlatModel(build_model(config.model, len(train.manifest["classes"])).to(device))
    if not client.shares_model:
        flat.params.copy_(reply["params"])
    version, epoch, step, samples = reply["version"], reply["epoch"], 0, 0
    loss_fn = nn.CrossEntropyLoss()
    meter = Meter()
    next_report = time.monotonic() + config.log_interval
    transfer = torch.bfloat16 if config.transfer_dtype == "bf16" else torch.float32
    flat.model.train()
    if reply["stop"]:
        return "stopped by the parameter server"
    while epoch < config.epochs:
        stream.set_epoch(epoch)
        batches = iter(make_loader(stream, config.loader_workers, pin_memory=device.type == "cuda"))
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            if stop.is_set():
                return "signal"
            images, labels = (t.to(device, non_blocking=True) for t in batch)
            t1 = time.perf_counter()
            flat.zero_grad()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = flat.model(normalize(images).contiguous(memory_format=torch.channels_last))
                loss = loss_fn(logits.float(), labels)
            loss.backward()
            correct = (logits.argmax(1) == labels).sum()
            loss_value, correct_value = loss.item(), int(correct.item())
            t2 = time.perf_counter()
            step += 1
            samples += labels.numel()
            metrics = None
            if time.monotonic() >= next_report:
                metrics = meter.report(epoch, step, samples)
                next_report = time.monotonic() + config.log_interval
            grads = flat.grads if client.shares_model else flat.grads.to("cpu", transfer)
            answer = client.push(version, grads, flat.buffers.cpu() if not client.shares_model
                                 else flat.buffers, labels.numel(), metrics)
            if answer.params is not None:
                flat.params.copy_(answer.params, non_blocking=True)
            version = answer.version
            meter.add(loss_value, correct_value, labels.numel(), t1 - t0, t2 - t1, time.perf_counter() - t2)
            if answer.stop:
                return "stopped by the parameter server"
        if client.epoch_done(epoch):
            return "finished" if epoch + 1 >= config.epochs else "stopped by the parameter server"
        epoch += 1
    return "finished"


def _my_shards(stream: ShardStream) -> set[str]:
    from .data import reader_plan

    readers = stream.workers * stream.loader_workers
    mine: set[str] = set()
    for local in range(stream.loader_workers):
        mine.update(reader_plan(stream.split.urls, stream.worker * stream.loader_workers + local, readers)[0])
    return mine
