"""Staleness alone, without adt: a plain PyTorch loop that applies every gradient exactly `tau`
updates after the parameters it was computed at were current. It separates what asynchrony
costs the algorithm from anything the engine's processes or RPC might add.

    python -m bench.staleness_sim --tau 0,1,3,7 --rules sgd,async-momentum,lookahead,lookahead-damped

Same model, data, schedule, augmentation and BatchNorm recompute as `adt run`'s defaults.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import torch
from torch import nn

from engine.config import RunConfig
from engine.data import ShardStream, resolve_data
from engine.evaluate import evaluate, recompute_batchnorm
from engine.models import build_model, normalize
from engine.schedule import LRSchedule

from .throughput import ensure_data


def train(data_dir: Path, model_name: str, tau: int, rule: str, epochs: int, batch: int) -> list[float]:
    torch.manual_seed(0)
    data = resolve_data(str(data_dir))
    config = RunConfig(model=model_name, batch_size=batch, epochs=epochs).validate()
    model = build_model(model_name, len(data.classes))
    params = list(model.parameters())
    velocity = [torch.zeros_like(p) for p in params]
    mu, decay = config.momentum, config.weight_decay
    lr = LRSchedule(config, data.train.num_samples)
    stream = ShardStream(data.train, 0, 1, 0, batch, train=True, seed=0, augment=config.augment)
    loss_fn = nn.CrossEntropyLoss()
    in_flight: collections.deque = collections.deque()  # (parameters sent, images, labels)
    update, accs = 0, []
    momentum = {"async-momentum": max(0.0, mu - tau / (1 + tau)),  # as the engine's rules set it
                "lookahead-damped": max(0.0, mu - max(0, tau - 1) / (1 + tau))}.get(rule, mu)
    for epoch in range(epochs):
        stream.set_epoch(epoch)
        for images, labels in stream:
            sent = [p.detach().clone() for p in params]
            if rule.startswith("lookahead"):  # where the momentum carries the model in tau updates
                reach = sum(momentum ** i for i in range(1, tau + 1))
                for s, v in zip(sent, velocity):
                    s.sub_(lr(update) * reach * v)
            in_flight.append((sent, images, labels))
            if len(in_flight) <= tau:
                continue
            sent, images, labels = in_flight.popleft()
            now = [p.detach().clone() for p in params]
            with torch.no_grad():
                for p, s in zip(params, sent):
                    p.copy_(s)
            model.zero_grad()
            loss_fn(model(normalize(images)), labels).backward()
            with torch.no_grad():
                for p, v, n in zip(params, velocity, now):
                    p.copy_(n)
                    v.mul_(momentum).add_(p.grad + decay * p)
                    p.sub_(lr(update) * v)
            update += 1
        recompute_batchnorm(model, stream.head(), config.bn_recompute, torch.device("cpu"))
        accs.append(evaluate(model, data.val, torch.device("cpu"), 0)["acc"])
    return accs


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.staleness_sim", description=__doc__.splitlines()[0])
    p.add_argument("--tau", default="0,1,3", help="delays in updates, comma-separated")
    p.add_argument("--rules", default="sgd,async-momentum,lookahead,lookahead-damped")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--model", default="cnn")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workdir", default="bench-out")
    args = p.parse_args()
    data = ensure_data(Path(args.workdir).resolve() / "data", 10, 32, 6000, 1000, 8)
    for tau in [int(t) for t in args.tau.split(",")]:
        for rule in args.rules.split(",") if tau else ["sgd"]:
            accs = train(data, args.model, tau, rule, args.epochs, args.batch)
            print(f"tau {tau:2d} {rule:15s} val acc per epoch {[round(a, 3) for a in accs]}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
