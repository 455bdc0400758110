"""Does the monitor keep up with a fast job? Feed it a 100,000-line events.jsonl and time it.

    python bench/monitor_load.py [--events 100000] [--workers 8] [--live]

Writes a synthetic run (the shape a fast 8-worker job writes) to a temp dir, opens the real
monitor on it headless (`adt watch` mode), and reports how long until the final state is on
screen (and its curves in the charts; each chart redraws at most once a second, every two while
reading a backlog), and the longest stall of the event loop meanwhile: a stall is a freeze a person would
see (keys and redraws wait for it). `--live` appends the events while the monitor runs instead
of writing them first. A benchmark, not a test: it prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adt_tui.app import AdtApp
from adt_tui.state import RunState
from engine.config import RunConfig


def synthetic_events(n: int, workers: int, run_id: str = "bench") -> list[str]:
    """n event lines: a start, joins, then metrics at the mix a fast job writes, and the end."""
    t0 = 1_700_000_000.0
    lines: list[dict] = [{"kind": "run_start", "config": RunConfig(workers=workers).to_dict(),
                          "pid": 1, "mode": "async", "workers": workers, "model": "cnn",
                          "num_classes": 10, "code": {"fingerprint": "benchbench00"}}]
    lines += [{"kind": "worker_join", "worker": w, "pid": 100 + w} for w in range(workers)]
    version = 0
    i = 0
    while len(lines) < n - 1:
        i += 1
        w = i % workers
        lines.append({"kind": "worker_metrics", "worker": w, "epoch": i // 20000, "step": i // workers,
                      "samples": i * 8, "loss": 2.3 / (1 + i / 5000), "acc": min(0.99, i / 90000),
                      "images_per_s": 800.0 + w, "staleness": i % 5,
                      "timing": {"data": 1.0, "compute": 5.0, "push_pull": 2.0}})
        if i % workers == 0:
            version += workers
            lines.append({"kind": "ps_metrics", "version": version, "epoch": i // 20000,
                          "samples_seen": i * 8, "updates_per_s": 400.0,
                          "staleness": {"p50": 2, "p95": 6, "max": 9, "hist": {"0": 1, "2": 5}},
                          "dropped": 0, "lr": 0.05, "apply_ms": 0.4, "live_workers": workers})
        if i % 5000 == 0:
            lines.append({"kind": "validation", "version": version, "epoch": i // 20000, "loss": 1.0,
                          "acc": min(0.95, i / 100000), "chance": 0.1, "count": 1000})
            lines.append({"kind": "checkpoint", "tag": "last", "path": "/x/last.pt", "version": version,
                          "epoch": i // 20000, "val_acc": 0.5})
    lines = lines[: n - 1]
    lines.append({"kind": "run_end", "outcome": "finished", "version": version, "epoch": 4,
                  "best_val_acc": 0.95, "message": "all epochs done"})
    return [json.dumps({"v": 1, "t": t0 + k * 0.001, "run_id": run_id, **e}, separators=(",", ":"))
            for k, e in enumerate(lines)]


async def measure(run_dir: Path, lines: list[str], live: bool) -> dict[str, float]:
    events = run_dir / "events.jsonl"
    if not live:
        events.write_text("\n".join(lines) + "\n")
    else:
        events.write_text("")

        def writer() -> None:  # ~50,000 lines/s in bursts, like a very fast job
            with open(events, "a") as f:
                for k in range(0, len(lines), 500):
                    f.write("\n".join(lines[k:k + 500]) + "\n")
                    f.flush()
                    time.sleep(0.01)

    app = AdtApp(run_dir=run_dir)
    stalls: list[float] = []
    start = time.perf_counter()  # the monitor starts reading as it opens
    async with app.run_test(size=(160, 48)) as pilot:
        opened = time.perf_counter() - start
        if live:
            threading.Thread(target=writer, daemon=True).start()
        last = time.perf_counter()
        while app.state.events < len(lines) or app.state.outcome is None:
            await asyncio.sleep(0.01)  # a heartbeat: how late it wakes is how long the loop froze
            now = time.perf_counter()
            stalls.append(max(0.0, now - last - 0.01))
            last = now
            if now - start > 120:
                break
        await pilot.pause()
        caught_up = time.perf_counter() - start
        header = str(app.query_one("#header").render())
        loss = app.charts["loss"]
        while loss.drawn_key is None or loss.drawn_key[0] != app.state.curves.changes:
            await pilot.pause(0.05)  # the final curves reach the chart within a second
        charted = time.perf_counter() - start
        builds = sum(chart.builds for chart in app.charts.values())
    return {"seconds": caught_up, "charted": charted, "builds": builds, "opened": opened, "max_stall": max(stalls or [0.0]),
            "events": app.state.events, "slow": sum(s > 0.1 for s in stalls), "beats": len(stalls),
            "finished_on_screen": float("FINISHED" in header),
            "p99_stall": sorted(stalls)[int(0.99 * (len(stalls) - 1))] if stalls else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--live", action="store_true", help="append while the monitor runs")
    args = parser.parse_args()
    lines = synthetic_events(args.events, args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "bench"
        (run_dir / "logs").mkdir(parents=True)
        (run_dir / "config.json").write_text(json.dumps(RunConfig(workers=args.workers).to_dict()))
        size = sum(len(line) + 1 for line in lines)
        t = time.perf_counter()
        (run_dir / "plain.jsonl").write_text("\n".join(lines) + "\n")
        RunState.from_file(run_dir / "plain.jsonl")
        fold = time.perf_counter() - t
        result = asyncio.run(measure(run_dir, lines, args.live))
    print(f"{len(lines):,} events ({size / 2**20:.1f} MiB), {args.workers} workers, "
          f"{'live append' if args.live else 'written before the monitor opened'}")
    print(f"  plain fold (RunState.from_file, no screen): {fold:.2f} s")
    print(f"  monitor: final state on screen after {result['seconds']:.2f} s "
          f"({result['events']:,.0f} events applied, FINISHED shown: {bool(result['finished_on_screen'])})")
    print(f"  charts: final curves drawn after {result['charted']:.2f} s; "
          f"{result['builds']:.0f} chart pictures built in all")
    print(f"  the screen was up after {result['opened']:.2f} s; then a 10 ms heartbeat ran "
          f"{result['beats']:.0f} times: longest stall {result['max_stall'] * 1000:.0f} ms, "
          f"p99 {result['p99_stall'] * 1000:.0f} ms, {result['slow']:.0f} stalls over 100 ms")


if __name__ == "__main__":
    main()
