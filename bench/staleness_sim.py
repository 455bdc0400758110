"""Staleness alone, without processes or RPC: N virtual workers take turns, so every gradient is
computed at parameters sent N-1 updates before it lands, and the engine's own update rule
(engine/rules.py) applies it. It separates what asynchrony costs the algorithm from anything
the engine's processes or RPC might add, in seconds per configuration on a CPU.

    python -m bench.staleness_sim --workers 1,4,8 --rules lookahead,gap-aware,delayed-nesterov

Same model, data, schedule, augmentation and BatchNorm recompute as `adt run`'s defaults; the
round-robin order is what N equally fast workers give (staleness exactly N-1; 2N-1 with
`--set overlap=true`); `--speeds` makes them uneven, as workers sharing CPU cores or a GPU
without MPS are.
"""

from __future__ import annotations

import argparse
import collections
import heapq
import itertools
import json
import random
from pathlib import Path

import torch
from torch import nn

from engine.config import RunConfig, overlaps
from engine.data import ShardStream, resolve_data
from engine.evaluate import evaluate, recompute_batchnorm
from engine.models import build_model
from engine.rules import make_optimizer, make_rule
from engine.schedule import LRSchedule
from engine.server import FlatModel
from engine.worker import compute_gradient

from .throughput import ensure_data


def train(data_dir: Path, workers: int, rule_name: str, epochs: int, batch: int, seed: int,
          model_name: str = "cnn", speeds: list[float] | None = None, **settings: object) -> list[float]:
    """Validation accuracy after each epoch. `speeds`: each worker's time per gradient (cycled over
    the workers), drawn with +-25% jitter; None: all equal and exact, a strict round robin."""
    torch.manual_seed(seed)
    data = resolve_data(str(data_dir))
    config = RunConfig(model=model_name, batch_size=batch, epochs=epochs, update_rule=rule_name,
                       workers=workers, seed=seed, device="cpu", ps_device="cpu", **settings).validate()
    classes = len(data.classes)
    ps = FlatModel(build_model(model_name, classes))
    worker = FlatModel(build_model(model_name, classes))
    rule = make_rule(config, ps.params, ps.grads, ps.model, single=workers <= 1)
    schedule = LRSchedule(config, data.train.num_samples)
    stream = ShardStream(data.train, 0, 1, 0, batch, train=True, seed=seed, augment=config.augment)
    loss_fn = nn.CrossEntropyLoss()
    version = 0
    # (time it lands, order sent, (worker, version sent, parameters sent, the rule's step size then))
    in_flight: list = []
    busy_until: dict[int, float] = collections.defaultdict(float)  # each worker's last gradient's end
    clock = random.Random(seed)
    order = itertools.count()  # ties land in the order sent: equal workers take strict turns
    latest: dict[int, torch.Tensor] = {}  # the parameters each worker was sent last
    overlap = overlaps(config) and workers > 1 and rule_name != "local-sgd"
    pushed: dict[int, torch.Tensor] = {}  # with overlap: each worker's push still in flight

    def send(k: int, now: float) -> None:
        out = rule.outgoing()
        rule.sent(k, version, out)
        took = speeds[k % len(speeds)] * clock.uniform(0.75, 1.25) if speeds else 1.0
        busy_until[k] = max(now, busy_until[k]) + took  # a worker computes one gradient at a time
        latest[k] = out.clone()
        heapq.heappush(in_flight, (busy_until[k], next(order), (k, version, latest[k],
                                                                rule.step_size(schedule(version)))))

    # With --overlap every worker has two pushes in flight: it computes on the parameters of the
    # reply before last, so its gradient lands 2N-1 updates after its parameters were sent.
    for _ in range(2 if overlap else 1):
        for k in range(max(1, workers)):
            send(k, 0.0)
    local = rule_name == "local-sgd" and workers > 1
    # local-sgd: each worker's own parameters and inner optimizer (`LocalSteps` in engine/worker.py)
    own = [latest[k].clone() for k in range(max(1, workers))] if local else []
    inner = [make_optimizer(config, worker.model.parameters(), worker.params.device) for _ in own]
    steps = 0
    accs = []
    for epoch in range(epochs):
        stream.set_epoch(epoch)
        for images, labels in stream:
            now, _, (k, base, sent, step_size) = in_flight[0]
            if local:  # worker k's next inner step, from its own parameters
                worker.params.copy_(own[k])
            else:
                worker.params.copy_(sent)
                if k in pushed:  # as `Exchange.step` does: the push in flight's step, taken ahead
                    worker.params.add_(pushed[k], alpha=-step_size)
            worker.buffers.copy_(ps.buffers)
            compute_gradient(worker.model, worker, loss_fn, images, labels)
            ps.buffers.copy_(worker.buffers)  # BatchNorm's running statistics; recomputed below
            if local:
                for group in inner[k].param_groups:
                    group["lr"] = schedule(steps)
                inner[k].step()
                own[k].copy_(worker.params)
                steps += 1
                if steps % config.local_steps:
                    continue
                ps.grads.copy_(sent - own[k])  # the delta since the global parameters it started from
            else:
                ps.grads.copy_(worker.grads)
                if overlap:
                    pushed[k] = worker.grads.clone()
            heapq.heappop(in_flight)
            rule.apply(k, version - base, base, schedule(steps if local else version))
            version += 1
            send(k, now)
            if local:
                own[k].copy_(latest[k])
        recompute_batchnorm(ps.model, stream.head(), config.bn_recompute, torch.device("cpu"))
        accs.append(evaluate(ps.model, data.val, torch.device("cpu"), 0)["acc"])
    return accs


def speeds_arg(text: str) -> list[float]:
    """`--speeds`: positive numbers, comma-separated; argparse turns the error into exit 2."""
    try:
        speeds = [float(x) for x in text.split(",")]
    except ValueError:
        speeds = []
    if not speeds or not all(0 < x < float("inf") for x in speeds):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of times per gradient. Fix: positive "
                                         "numbers, comma-separated, e.g. --speeds 1,1,1,2")
    return speeds


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.staleness_sim", description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="1,4", help="worker counts, comma-separated (staleness N-1)")
    p.add_argument("--rules", default="lookahead,gap-aware,lookahead-gap-aware,delayed-nesterov")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seeds", default="0", help="comma-separated")
    p.add_argument("--model", default="cnn")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--speeds", type=speeds_arg,
                   help="uneven workers: each one's time per gradient, comma-separated and cycled "
                   "over the workers, e.g. 1,1,1,2 (drawn with +-25%% jitter; default: all equal)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                   help="a config field for every run, e.g. --set momentum=0.8")
    p.add_argument("--workdir", default="bench-out")
    p.add_argument("--out", help="append the results as JSON lines to this file")
    args = p.parse_args()
    settings = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    data = ensure_data(Path(args.workdir).resolve() / "data", 10, 32, 6000, 1000, 8)
    for n in [int(w) for w in args.workers.split(",")]:
        for rule in args.rules.split(",") if n > 1 else ["sgd"]:
            for seed in [int(s) for s in args.seeds.split(",")]:
                accs = train(data, n, rule, args.epochs, args.batch, seed, args.model, args.speeds, **settings)
                row = {"workers": n, "rule": rule, "seed": seed, "settings": settings, "speeds": args.speeds,
                       "acc": [round(a, 4) for a in accs]}
                print(json.dumps(row), flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
