"""The synchronous baseline of the scaling benchmark: PyTorch DDP on adt's model and data.

    torchrun --standalone --nproc-per-node N -m bench.ddp --data DIR --batch 256 --epochs 10
    torchrun --standalone --nproc-per-node N -m bench.ddp --data DIR --batch 256 --steps 300

What a user would run instead of adt, kept as close to adt's defaults as DDP allows: the same
model (engine.models.build_model, small-input stem by image size), the same reader
(engine.data.ShardStream; rank r reads the share of adt worker r), the same normalisation, bf16
autocast and channels_last on CUDA, SGD with momentum 0.9 and weight decay 5e-4. NCCL on CUDA,
gloo on the CPU (so it runs in the tests). BatchNorm is DDP's default: each rank normalises with
its own batch, rank 0's running statistics are broadcast at every forward.

Two modes; rank 0 prints JSON lines:
- `--steps S` (throughput): `--warmup` untimed steps, then S timed ones; one line, aggregate
  images/s = every rank's samples over the slowest rank's time.
- `--epochs E` (time to accuracy): adt's default recipe for E epochs: flip-crop augmentation, a
  linear LR warmup over 1 epoch then cosine to zero (engine.schedule), peak LR `--lr` x N. The
  global batch is N times one process's, so the LR scales linearly with it (adt's async workers
  each apply their own batch at `--lr`). After every epoch rank 0 validates the unwrapped model
  on the whole validation split (engine.evaluate) while the other ranks wait at a barrier, and
  prints {"bench": "ddp", "epoch", "samples_seen", "acc", "loss", "t", "images_per_s_epoch", ...}
  (`epoch`: the 0-based epoch that finished; `t`: Unix time; the rate: the epoch's training
  alone, all ranks); then one line with "summary": true (images/s: the median epoch's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.join import Join
from torch.nn.parallel import DistributedDataParallel

from engine.data import DataSpec, ShardStream, Split, make_loader, resolve_data
from engine.models import build_model, normalize

Batch = tuple[torch.Tensor, torch.Tensor]


def endless(stream: ShardStream, loader_workers: int, pin_memory: bool) -> Iterator[Batch]:
    """Batches forever, a new epoch (and shuffle) whenever this rank's share runs out, as adt's
    workers do."""
    epoch = 0
    while True:
        stream.set_epoch(epoch)
        yield from make_loader(stream, loader_workers, pin_memory=pin_memory)
        epoch += 1


def full_batches(batches: Iterator[Batch], size: int) -> Iterator[Batch]:
    """Re-cut into batches of exactly `size`, the last of the epoch excepted.

    Each loader process ends its share with a short batch; left as they are, an epoch would take
    about one step more per loader process, and the LR clock (in global steps) would overrun.
    """
    parts: list[Batch] = []
    held = 0
    for images, labels in batches:
        if not parts and labels.numel() == size:
            yield images, labels  # the usual case: passed through, pinned memory and all
            continue
        parts.append((images, labels))
        held += labels.numel()
        while held >= size:
            images, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            yield images[:size], labels[:size]
            parts, held = ([(images[size:], labels[size:])] if held > size else []), held - size
    if held:
        yield torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def sync(device: torch.device) -> None:
    """Wait for queued GPU work and for every rank, so a timer brackets whole steps on all."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dist.barrier()


def reduce(value: float, device: torch.device, op: Any = dist.ReduceOp.SUM) -> float:
    """`value` summed (or max-ed) over the ranks."""
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op)
    return tensor.item()


class Trainer:
    """One rank's model, optimizer and step; the LR is set per step from a schedule."""

    def __init__(self, args: argparse.Namespace, split: Split, device: torch.device) -> None:
        self.device, self.cuda = device, device.type == "cuda"
        classes, size = len(split.manifest["classes"]), split.manifest["image_size"]
        model = build_model(args.model, classes, size).to(device)
        if self.cuda:  # adt's workers keep conv weights so too
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.ddp = DistributedDataParallel(model, device_ids=[device.index] if self.cuda else None)
        # adt's defaults (RunConfig: momentum 0.9, weight decay 5e-4); fused on CUDA like adt's PS.
        self.optimizer = torch.optim.SGD(self.ddp.parameters(), lr=args.lr, momentum=0.9,
                                         weight_decay=5e-4, fused=self.cuda)
        self.loss_fn = nn.CrossEntropyLoss()

    def step(self, batch: Batch, lr: float | None = None) -> int:
        images, labels = (t.to(self.device, non_blocking=True) for t in batch)
        x = normalize(images)
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        if lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
            loss = self.loss_fn(self.ddp(x).float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP all-reduces the gradients here, bucket by bucket
        self.optimizer.step()
        return labels.numel()


def throughput(args: argparse.Namespace, trainer: Trainer, split: Split, rank: int,
               world: int) -> dict[str, Any]:
    """`--steps` mode: images/s over timed steps after untimed warm-up ones."""
    stream = ShardStream(split, rank, world, args.loader_workers, args.batch, train=True)
    batches = endless(stream, args.loader_workers, pin_memory=trainer.cuda)
    for _ in range(args.warmup):
        trainer.step(next(batches))
    sync(trainer.device)
    start = time.perf_counter()
    samples = sum(trainer.step(next(batches)) for _ in range(args.steps))
    sync(trainer.device)
    elapsed = time.perf_counter() - start
    batches.close()  # shuts the DataLoader's processes down before the group goes
    total = reduce(samples, trainer.device)
    slowest = reduce(elapsed, trainer.device, dist.ReduceOp.MAX)
    return {"steps": args.steps, "warmup": args.warmup, "images": int(total),
            "seconds": round(slowest, 3), "images_per_s": round(total / slowest, 1),
            "step_ms": round(1000 * slowest / args.steps, 2)}


def epoch_batches(split: Split, args: argparse.Namespace, rank: int, world: int, epoch: int,
                  pin_memory: bool) -> Iterator[Batch]:
    """One epoch of this rank's share; its loader processes start now and fill while we wait."""
    # A fresh stream per epoch: with 0 loader processes a stream reads its epoch lazily.
    stream = ShardStream(split, rank, world, args.loader_workers, args.batch, train=True,
                         augment="flip-crop")
    stream.set_epoch(epoch)
    loader = iter(make_loader(stream, args.loader_workers, pin_memory=pin_memory))
    return full_batches(loader, args.batch)


def lr_schedule(args: argparse.Namespace, train_samples: int, world: int) -> Any:
    """adt's schedule with the clock in global steps: warmup 1 epoch, cosine to zero, peak
    `--lr` x world."""
    from engine.config import RunConfig
    from engine.schedule import LRSchedule

    recipe = RunConfig(lr=args.lr * world, epochs=args.epochs, batch_size=args.batch * world,
                       warmup="1ep", lr_schedule="cosine")
    return LRSchedule(recipe, train_samples)


def to_accuracy(args: argparse.Namespace, trainer: Trainer, data: DataSpec, rank: int,
                world: int) -> dict[str, Any]:
    """`--epochs` mode: train epoch by epoch, validating on rank 0 after each."""
    from engine.evaluate import evaluate

    schedule = lr_schedule(args, data.train.num_samples, world)
    device, step, seen, rates, result = trainer.device, 0, 0, [], {}
    batches = epoch_batches(data.train, args, rank, world, 0, trainer.cuda)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        sync(device)
        began, samples = time.perf_counter(), 0
        # The ranks' shares differ by a few samples, so one may have a last step the others lack.
        with Join([trainer.ddp]):
            for batch in batches:
                samples += trainer.step(batch, schedule(step))
                step += 1
        sync(device)
        elapsed = time.perf_counter() - began
        step = int(reduce(step, device, dist.ReduceOp.MAX))  # one LR clock on every rank
        epoch_samples = reduce(samples, device)
        seen += int(epoch_samples)
        rates.append(epoch_samples / reduce(elapsed, device, dist.ReduceOp.MAX))
        if epoch + 1 < args.epochs:  # its loaders fill while rank 0 validates, as adt's do
            batches = epoch_batches(data.train, args, rank, world, epoch + 1, trainer.cuda)
        if rank == 0:
            result = evaluate(trainer.model, data.val, device, args.loader_workers)
            print(json.dumps({"bench": "ddp", "epoch": epoch, "samples_seen": seen,
                              "acc": result["acc"], "loss": result["loss"], "t": time.time(),
                              "images_per_s_epoch": round(rates[-1], 1),
                              "val_seconds": result["seconds"]}), flush=True)
        dist.barrier()  # the other ranks wait for the validation
    return {"epochs": args.epochs, "lr_peak": args.lr * world, "samples_seen": seen,
            "final_acc": result.get("acc"), "images_per_s": round(statistics.median(rates), 1),
            "epoch_images_per_s": [round(r, 1) for r in rates],
            "seconds": round(time.perf_counter() - start, 3)}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="torchrun -m bench.ddp", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True,
                   help="data directory holding train/ and val/ (as for `adt run`)")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch", type=int, default=256, help="per process (per GPU)")
    p.add_argument("--epochs", type=int, default=0,
                   help="train to accuracy for E epochs, validating after each (0: --steps mode)")
    p.add_argument("--steps", type=int, default=300, help="timed steps per process (throughput)")
    p.add_argument("--warmup", type=int, default=30,
                   help="untimed steps before --steps: CUDA init, autotuning, buckets")
    p.add_argument("--loader-workers", type=int, default=4, help="decoding processes per rank")
    p.add_argument("--device", choices=("cuda", "cpu"),
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--lr", type=float, default=0.05,
                   help="one process's LR; --epochs mode peaks at LR x processes (linear scaling)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cuda = args.device == "cuda"
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    # device_id binds NCCL to this rank's GPU up front (no guessing in barrier()).
    dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)

    data = resolve_data(args.data)
    trainer = Trainer(args, data.train, device)
    if args.epochs:
        result = to_accuracy(args, trainer, data, rank, world)
    else:
        result = throughput(args, trainer, data.train, rank, world)
    if rank == 0:
        print(json.dumps({
            "bench": "ddp", **({"summary": True} if args.epochs else {}), "world_size": world,
            "backend": dist.get_backend(), "device": args.device,
            "gpu": torch.cuda.get_device_name(device) if cuda else None, "model": args.model,
            "batch": args.batch, "loader_workers": args.loader_workers, **result,
        }), flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
