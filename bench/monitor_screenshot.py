"""Run a real job under the monitor, without a terminal, and save its screen as SVG.

    python bench/monitor_screenshot.py --out screen.svg [--size 160x48] [--after 60] [-- run flags]

For docs and for machines where nobody sits at a terminal (a GPU box): the monitor is the real
one (AdtApp, through Textual's headless pilot), the job is the real one (`adt run` flags after
`--`, e.g. `-- --device cuda --ps-device cuda --epochs 5`). It waits until the workers train,
then `--after` seconds more (or the run's end), saves the screen, and stops the job. Prints what
the GPU sampler saw, so a run on a GPU machine says whether the GPU columns had data.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adt_tui.app import AdtApp
from adt_tui.cli import build_parser, config_from_args
from adt_tui.launch import prepare_job


async def shoot(app: AdtApp, out: Path, size: tuple[int, int], after: float, timeout: float) -> None:
    async with app.run_test(size=size) as pilot:
        start = time.monotonic()
        while not (app.state.workers and all(w.step for w in app.state.workers.values())):
            if app.state.ended or time.monotonic() - start > timeout:
                break
            await pilot.pause(0.5)
        until = time.monotonic() + after
        while time.monotonic() < until and not app.state.ended:
            await pilot.pause(0.5)
        await pilot.pause(1.5)  # the stats timer and a chart turn after the last events
        app.draw_charts(force=True)
        await pilot.pause(0.5)
        app.save_screenshot(out.name, str(out.parent))
        print(f"saved {out} at {size[0]}x{size[1]}: {app.state.events} events, "
              f"state {app.job_state()}, GPU sampler available: {app.gpu.available}, "
              f"GPU usage seen: {app.gpus or 'none'}")
        if app.job_running():
            app.supervisor.stop()  # type: ignore[union-attr]


def main() -> None:
    argv = sys.argv[1:]
    run_flags = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", default="160x48", help="COLUMNSxROWS")
    parser.add_argument("--after", type=float, default=60.0,
                        help="seconds to keep training once every worker has stepped")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(own)
    config = config_from_args(build_parser().parse_args(["run", *run_flags]))
    prepare_job(config)
    width, height = (int(v) for v in args.size.split("x"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(shoot(AdtApp(config), args.out, (width, height), args.after, args.timeout))


if __name__ == "__main__":
    main()
