"""The worker loop: pull parameters, compute a gradient on a batch, push it, never wait for peers.

The same loop drives `--workers 0` through an in-process client, so the baseline and the async
run share model, data, optimizer and evaluation code.
"""

from __future__ import annotations

import itertools
import os
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .config import RunConfig, overlaps, update_rule_of
from .data import ShardStream, Split, make_loader, worker_shards
from .fingerprint import startup_fingerprint
from .flat import FlatModel
from .models import build_for, normalize
from .placement import device_for, local_slot
from .profile import StepProfiler
from .rule_registry import rule_spec
from .rules import make_optimizer


class Meter:
    """Running loss/accuracy/throughput and step timings between two metric reports.

    Loss and correct counts stay on the device until `report`: reading them every step would
    make the host wait for the GPU and leave it idle while the next step is launched.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss: torch.Tensor | float = 0.0
        self.correct: torch.Tensor | float = 0.0
        self.count = 0
        self.timing: dict[str, list[float]] = {}
        self.since = time.monotonic()

    def add(self, loss: torch.Tensor, correct: torch.Tensor, n: int, **seconds: float) -> None:
        self.loss = self.loss + loss * n
        self.correct = self.correct + correct
        self.count += n
        for key, value in seconds.items():
            self.timing.setdefault(key, []).append(1000 * value)

    def report(self, epoch: int, step: int, samples: int) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.since, 1e-9)
        metrics = {
            "epoch": epoch, "step": step, "samples": samples,
            "loss": float(self.loss) / max(self.count, 1), "acc": float(self.correct) / max(self.count, 1),
            "images_per_s": round(self.count / elapsed, 1),
            "timing": {k: round(statistics.median(v), 3) for k, v in self.timing.items() if v},
            "timing_p95": {k: round(_p95(v), 3) for k, v in self.timing.items() if v},
        }
        self.reset()
        return metrics


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def worker_info(worker: int, rank: int, device: torch.device, shards: list[str], loader_workers: int) -> dict[str, Any]:
    return {"rank": rank, "pid": os.getpid(), "host": socket.gethostname(), "device": str(device),
            "code_fingerprint": startup_fingerprint()["fingerprint"], "shards": shards,
            "loader_workers": loader_workers,
            # Where it runs in a torchrun job (GROUP_RANK is the node); one machine: node 0.
            "node": int(os.environ.get("GROUP_RANK", "0")),
            "local_rank": int(os.environ.get("LOCAL_RANK", str(rank)))}


def compute_gradient(forward: Any, flat: FlatModel, loss_fn: nn.Module, images: torch.Tensor,
                     labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward on one batch; the gradient lands in flat.grads. Returns (loss, correct)
    as tensors on the device, so the host never waits for the GPU here."""
    flat.zero_grad()
    device = images.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = forward(normalize(images).contiguous(memory_format=torch.channels_last))
        loss = loss_fn(logits.float(), labels)
    loss.backward()
    return loss.detach(), (logits.argmax(1) == labels).sum()


def run_worker(client: Any, config: RunConfig, train: Split, worker: int, workers: int, rank: int,
               stop: threading.Event, model: FlatModel | None = None) -> str:
    """Train until the PS says stop, the epochs run out, or `stop` is set; returns why it ended."""
    device = device_for(config.device, local_slot(worker))
    stream = ShardStream(train, worker, workers, config.loader_workers, config.batch_size,
                         train=True, seed=config.seed, augment=config.augment)
    shards = worker_shards(train.urls, worker, workers, config.loader_workers)
    reply = client.register(worker_info(worker, rank, device, shards, config.loader_workers))
    flat = model or FlatModel(build_for(config, len(train.manifest["classes"]), train.manifest["image_size"]).to(device))
    # dynamic=False: an epoch's last, smaller batch would otherwise recompile the model for a
    # dynamic batch size, and every later full batch would run that slower, generic code.
    forward = torch.compile(flat.model, dynamic=False) if config.compile else flat.model
    if not client.shares_model:
        flat.params.copy_(reply["params"])
    epoch, step, samples = reply["epoch"], 0, 0
    local = rule_spec(update_rule_of(config)).worker_sends == "delta" and not client.shares_model
    link = (LocalSteps if local else Exchange)(client, flat, config, reply["version"], reply["lr"])
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    meter = Meter()
    profiler = StepProfiler("single" if client.shares_model else f"worker{worker}")
    next_report = time.monotonic() + config.log_interval
    flat.model.train()
    if reply["stop"]:
        return "stopped by the parameter server"

    def epoch_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        stream.set_epoch(epoch)  # read when the loader starts its processes: each has its own copy
        return iter(make_loader(stream, config.loader_workers, pin_memory=device.type == "cuda"))

    batches = epoch_batches(epoch)
    if not client.shares_model:
        batches = take_fresh_parameters_after_a_first_step(client, link, forward, flat, loss_fn,
                                                           batches, device)
    while epoch < config.epochs:
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            if stop.is_set():
                link.drain()
                return "signal"
            images, labels = (t.to(device, non_blocking=True) for t in batch)
            t1 = time.perf_counter()
            loss, correct = compute_gradient(forward, flat, loss_fn, images, labels)
            t2 = time.perf_counter()
            step += 1
            samples += labels.numel()
            metrics = None
            if time.monotonic() >= next_report and meter.count:
                metrics = meter.report(epoch, step, samples)
                next_report = time.monotonic() + config.log_interval
            stop_now, push_s, pull_s = link.step(labels.numel(), metrics)
            meter.add(loss, correct, labels.numel(), data=t1 - t0, compute=t2 - t1,
                      push_pull=push_s, **({"pull": pull_s} if pull_s else {}))
            profiler.step()
            if stop_now:
                link.drain()
                return "stopped by the parameter server"
        if link.drain():
            return "stopped by the parameter server"
        if epoch + 1 < config.epochs:
            # Start the next epoch's loader processes before the barrier: they open their shards
            # and fill their shuffle buffers while the slowest worker finishes and the PS validates.
            batches = epoch_batches(epoch + 1)
        reply = client.epoch_done(epoch)
        if reply.params is not None:
            link.load(reply)
        if reply.stop:
            return "finished" if epoch + 1 >= config.epochs else "stopped by the parameter server"
        epoch += 1
    return "finished"


def take_fresh_parameters_after_a_first_step(
        client: Any, link: Exchange, forward: Any, flat: FlatModel, loss_fn: nn.Module,
        batches: Iterator[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A worker's first step is slow (loader processes starting, cudnn autotuning, torch.compile):
    its first push would be as stale as every update the others made meanwhile (41 on two H200s).
    So compute that step once to warm up, throw it away, take the PS's parameters of the moment,
    and train on the same batch again. Returns the batches, the first one included."""
    first = next(batches, None)
    if first is None:
        return batches
    buffers = flat.buffers.clone()  # the warm-up forward must not move BatchNorm's statistics
    images, labels = (t.to(device, non_blocking=True) for t in first)
    compute_gradient(forward, flat, loss_fn, images, labels)
    flat.buffers.copy_(buffers)
    link.load(client.refresh())
    return itertools.chain([first], batches)


def running_stats(flat: FlatModel, metrics: dict[str, Any] | None) -> torch.Tensor | None:
    """The BatchNorm running statistics, sent only with a metrics report: the copy to the host
    waits for the GPU, and the PS needs them rarely (only with `bn_recompute 0`)."""
    return flat.buffers.detach().cpu() if metrics is not None else None


class Exchange:
    """Pushes each gradient to the PS and loads the parameters it sends back.

    adt's transport: one flat buffer each way in one round trip, left on the GPU when the PS is
    on one too (TensorPipe device maps). With `overlap`, the push of step k is in flight while
    step k+1 computes (on parameters one round older, less step k's own step), so the round trip
    hides behind compute.
    The plain transport, kept for benchmarks: one fp32 CPU tensor per parameter, push then pull.
    """

    def __init__(self, client: Any, flat: FlatModel, config: RunConfig, version: int, lr: float) -> None:
        self.client, self.flat, self.config = client, flat, config
        self.version = version  # of the parameters now in flat.params
        self.pending: Any = None  # the push in flight (overlap only)
        self.overlap = overlaps(config) and not client.shares_model
        self.step_size = 0.0  # the PS's, from the last reply
        self.dtype = torch.bfloat16 if config.transfer_dtype == "bf16" else torch.float32
        self.on_gpu = flat.grads.is_cuda and config.ps_device.startswith("cuda")

    def step(self, samples: int, metrics: dict[str, Any] | None) -> tuple[bool, float, float]:
        """Push this step's gradient; returns (PS says stop, seconds blocked pushing, pulling)."""
        start = time.perf_counter()
        flat, client = self.flat, self.client
        buffers = flat.buffers if client.shares_model else running_stats(flat, metrics)
        if client.shares_model:
            reply = client.push(self.version, flat.grads, buffers, samples, metrics)
            self.version = reply.version
            return reply.stop, time.perf_counter() - start, 0.0
        if self.config.transport == "plain":
            grads = {name: p.grad.detach().cpu() for name, p in flat.named_params.items()}
            client.push(self.version, grads, buffers, samples, metrics)
            pushed = time.perf_counter()
            reply = client.pull()
            for name, value in reply.params.items():
                flat.named_params[name].data.copy_(value)
            self.version = reply.version
            return reply.stop, pushed - start, time.perf_counter() - pushed
        # A copy: the next backward overwrites flat.grads while this one may still be in flight.
        grads = flat.grads.to(flat.grads.device if self.on_gpu else "cpu", self.dtype, copy=True)
        base = self.version
        stop = self.drain() if self.overlap else False
        future = client.push_async(base, grads, buffers, samples, metrics)
        if self.overlap:
            self.pending = future
            # It lands before the next push does: take its step here, as the PS will, so that the
            # next gradient is computed nearer where the model will be when it lands.
            flat.params.add_(flat.grads, alpha=-self.step_size)
        else:
            stop = self.load(client.wait(future))
        return stop, time.perf_counter() - start, 0.0

    def drain(self) -> bool:
        """Wait for the push in flight, if any, and load its parameters; returns the PS's stop."""
        if self.pending is None:
            return False
        future, self.pending = self.pending, None
        return self.load(self.client.wait(future))

    def load(self, reply: Any) -> bool:
        """Compute on the parameters a reply brought; returns the PS's stop."""
        self.flat.params.copy_(reply.params, non_blocking=True)
        self.version, self.step_size = reply.version, reply.step_size
        return reply.stop


class LocalSteps(Exchange):
    """The worker side of `local-sgd`: its own optimizer, and an exchange every `local_steps` steps.

    The worker pushes the delta `anchor - params` (anchor: the global parameters its local run
    started from) and gets the new global parameters back. It then *rebases*: it keeps whatever
    progress it made since the push (with `overlap`, the steps taken while the push was in
    flight) on top of the new global parameters, and the global parameters become its anchor.
    """

    def __init__(self, client: Any, flat: FlatModel, config: RunConfig, version: int, lr: float) -> None:
        super().__init__(client, flat, config, version, lr)
        self.lr = lr  # the PS's scheduled LR, refreshed by every reply
        self.optimizer = make_optimizer(config, flat.model.parameters(), flat.params.device)
        self.anchor = flat.params.clone()
        self.pushed: torch.Tensor | None = None  # the local parameters at the push in flight
        self.steps = self.samples = 0
        self.metrics: dict[str, Any] | None = None

    def step(self, samples: int, metrics: dict[str, Any] | None) -> tuple[bool, float, float]:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.optimizer.step()
        self.steps, self.samples = self.steps + 1, self.samples + samples
        self.metrics = metrics or self.metrics  # reported with the next push
        if self.steps % self.config.local_steps:
            return False, 0.0, 0.0
        start = time.perf_counter()
        stop = self._wait()  # the previous exchange, still in flight with overlap
        self._push()
        if not self.overlap:
            stop = self._wait() or stop
        return stop, time.perf_counter() - start, 0.0

    def drain(self) -> bool:
        """At an epoch's end or a stop: finish the exchange in flight, then push the steps since."""
        stop = self._wait()
        if self.samples:
            self._push()
            stop = self._wait() or stop
        return stop

    def _wait(self) -> bool:
        return super().drain()

    def _push(self) -> None:
        flat = self.flat
        delta = (self.anchor - flat.params).to(flat.params.device if self.on_gpu else "cpu", self.dtype)
        self.pushed = flat.params.clone()
        self.pending = self.client.push_async(self.version, delta, running_stats(flat, self.metrics),
                                              self.samples, self.metrics)
        self.samples, self.metrics = 0, None

    def load(self, reply: Any) -> bool:
        fresh = reply.params.to(self.flat.params.device, torch.float32)
        if self.pushed is None:  # nothing pushed yet: no local progress to keep
            self.flat.params.copy_(fresh)
        else:  # rebase: keep the progress made since the push
            self.flat.params.add_(fresh - self.pushed)
            self.pushed = self.flat.params.clone()
        self.anchor.copy_(fresh)
        self.version, self.lr = reply.version, reply.lr
        return reply.stop
