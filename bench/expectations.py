"""Write adt_tui/expectations.json: what one process reaches, from convergence benchmark results.

    python -m bench.expectations docs/convergence21_a.json docs/convergence_default_cpu.json

Each results file's single-process rows (`--workers 0`) become one entry: their curve averaged
over the seeds, the data as the benchmark generated it, and the settings that shape the curve
(adt_tui/expectation.py's SHAPING) as the benchmark ran them. The monitor and `adt run --no-ui`
hold a run without `--compare` to the entry that matches it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from adt_tui.expectation import SHAPING, TABLE
from engine.config import RunConfig
from engine.mirror import choose_augment

from .convergence import grouped, mean_curve


def entry(path: Path) -> dict[str, Any] | None:
    results = json.loads(path.read_text())
    singles = [r for r in results["rows"] if r["workers"] == 0 and r["exit_code"] == 0]
    if not singles:
        return None
    args, base = results["args"], dict(results["base"])
    for item in args.get("set", []):
        key, value = item.split("=", 1)
        base[key] = json.loads(value) if value[:1] in "0123456789-.tf[{" else value
    config = RunConfig(**{k: v for k, v in base.items() if k in RunConfig.__dataclass_fields__})
    manifest = Path(base["data"]) / "train" / "manifest.json"
    # As the preflight resolved it; the synthetic data is measured mirror-symmetric: flip-crop.
    config.augment = choose_augment(config.augment, json.loads(manifest.read_text()) if manifest.exists() else {})[0]
    runs = next(iter(grouped(singles).values()))
    machine = results["machine"]
    return {
        "source": f"{path.name}: bench/convergence.py, {len(runs)} seeds, "
                  f"{machine.get('gpu') or machine.get('cpu')}, {machine.get('date')}",
        "data": {"source": "adt synthetic", "seed": 0, "num_classes": args["classes"],
                 "image_size": [args["image_size"], args["image_size"]], "train_samples": args["train_samples"]},
        "config": {k: getattr(config, k) for k in SHAPING},
        "curve": [[round(x), round(acc, 4)] for x, acc in mean_curve(runs)],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", type=Path, help="convergence results JSON files")
    p.add_argument("--out", type=Path, default=TABLE)
    args = p.parse_args(argv)
    entries = [e for e in map(entry, args.results) if e is not None]
    args.out.write_text(json.dumps(entries, indent=1) + "\n")
    for e in entries:
        print(f"{e['source']}: {e['config']['model']}, {e['data']['num_classes']} classes, "
              f"final {e['curve'][-1][1]:.1%}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
