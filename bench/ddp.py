"""The synchronous baseline of the scaling benchmark: PyTorch DDP on adt's model and data.

    torchrun --standalone --nproc-per-node N -m bench.ddp --data DIR --batch 256 --steps 300 --warmup 30

What a user would run instead of adt, kept as close to an adt worker as DDP allows: the same model
(engine.models.build_model), the same reader (engine.data.ShardStream; rank r reads the share of
adt worker r), the same normalisation, bf16 autocast and channels_last on CUDA, SGD with momentum.
NCCL on CUDA, gloo on the CPU (so it runs in the tests). Rank 0 prints one JSON line: aggregate
images/s over the steps after warm-up, every rank's samples over the slowest rank's time.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from engine.data import ShardStream, make_loader, resolve_data
from engine.models import build_model, normalize


def endless(stream: ShardStream, loader_workers: int, pin_memory: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches forever, a new epoch (and shuffle) whenever this rank's share runs out, as adt's workers do."""
    epoch = 0
    while True:
        stream.set_epoch(epoch)
        yield from make_loader(stream, loader_workers, pin_memory=pin_memory)
        epoch += 1


def sync(device: torch.device) -> None:
    """Wait for queued GPU work and for every rank, so a timer brackets whole steps on all of them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dist.barrier()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="torchrun -m bench.ddp", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="data directory holding train/ (as for `adt run`)")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch", type=int, default=256, help="per process (per GPU)")
    p.add_argument("--steps", type=int, default=300, help="timed steps per process")
    p.add_argument("--warmup", type=int, default=30, help="untimed steps first: CUDA init, autotuning, buckets")
    p.add_argument("--loader-workers", type=int, default=4, help="decoding processes per rank")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--lr", type=float, default=0.05)
    args = p.parse_args(argv)

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cuda = args.device == "cuda"
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    # device_id binds NCCL to this rank's GPU up front (no guessing in barrier()).
    dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)

    split = resolve_data(args.data).train
    model = build_model(args.model, len(split.manifest["classes"])).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)  # adt's workers keep conv weights so too
    ddp = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    # adt's defaults (RunConfig: momentum 0.9, weight decay 5e-4); fused on CUDA like adt's PS.
    optimizer = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, fused=cuda)
    loss_fn = nn.CrossEntropyLoss()
    stream = ShardStream(split, rank, world, args.loader_workers, args.batch, train=True)
    batches = endless(stream, args.loader_workers, pin_memory=cuda)

    def step() -> int:
        images, labels = (t.to(device, non_blocking=True) for t in next(batches))
        x = normalize(images)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = loss_fn(ddp(x).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP all-reduces the gradients here, bucket by bucket
        optimizer.step()
        return labels.numel()

    for _ in range(args.warmup):
        step()
    sync(device)
    start = time.perf_counter()
    samples = sum(step() for _ in range(args.steps))
    sync(device)
    elapsed = time.perf_counter() - start

    total = torch.tensor([samples], dtype=torch.float64, device=device)
    slowest = torch.tensor([elapsed], dtype=torch.float64, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    if rank == 0:
        print(json.dumps({
            "bench": "ddp", "world_size": world, "backend": dist.get_backend(), "device": args.device,
            "gpu": torch.cuda.get_device_name(device) if cuda else None, "model": args.model,
            "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
            "loader_workers": args.loader_workers, "images": int(total.item()),
            "seconds": round(slowest.item(), 3), "images_per_s": round(total.item() / slowest.item(), 1),
            "step_ms": round(1000 * slowest.item() / args.steps, 2),
        }), flush=True)
    batches.close()  # shuts the DataLoader's processes down before the group goes
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
