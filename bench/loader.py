"""The input pipeline alone: decoded images/s with 1..K loader processes (per CPU core).

    python -m bench.loader --data bench-out/data/synth-c200-s64-n40000 --processes 1,2,4,8

Answers "does JPEG decoding starve the GPU?" without any model in the way.
"""

from __future__ import annotations

import argparse
import time

from engine.data import ShardStream, make_loader, resolve_data


def rate(data: str, processes: int, batch: int, seconds: float, augment: str) -> float:
    spec = resolve_data(data)
    stream = ShardStream(spec.train, worker=0, workers=1, loader_workers=processes, batch_size=batch, train=True,
                         augment=augment)
    count, start = 0, None
    for images, _ in make_loader(stream, processes):
        if start is None:  # the first batch pays for process start-up
            start = time.perf_counter()
            continue
        count += images.shape[0]
        if time.perf_counter() - start > seconds:
            break
    return count / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.loader")
    p.add_argument("--data", required=True)
    p.add_argument("--processes", default="1,2,4")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--augment", default="flip-crop", help="as in training (flip-crop), or none")
    args = p.parse_args()
    print(f"{'processes':>9} {'images/s':>10} {'per process':>12}")
    for n in (int(x) for x in args.processes.split(",")):
        r = rate(args.data, n, args.batch, args.seconds, args.augment)
        print(f"{n:>9} {r:>10.0f} {r / n:>12.0f}", flush=True)


if __name__ == "__main__":
    main()
