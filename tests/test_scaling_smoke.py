"""bench/scaling.py: its DDP baseline runs under torchrun on the CPU (gloo) and reports one JSON
line; its table's helpers compute what they say."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, child_env


def test_ddp_baseline_reports_every_ranks_images(tiny_data):
    steps, batch = 5, 32
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "bench.ddp", "--data", str(tiny_data), "--model", "cnn", "--batch", str(batch),
           "--steps", str(steps), "--warmup", "2", "--loader-workers", "1", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, f"only rank 0 prints, once: {proc.stdout!r}"
    result = json.loads(lines[0])
    assert result["world_size"] == 2 and result["backend"] == "gloo"
    # Each rank reads 2 of the 4 shards (600 samples): 7 steps of 32 stay in one epoch, all full.
    assert result["images"] == 2 * steps * batch
    assert result["images_per_s"] > 0 and result["seconds"] > 0


def test_scaling_table_helpers():
    """Time to accuracy interpolates in wall time between validations; efficiency and the targets
    are ratios of the rows' own numbers."""
    from bench.scaling import efficiency, reach, table, targets, time_to_reach

    curve = [(10.0, 0.2), (20.0, 0.6), (30.0, 0.8)]
    assert time_to_reach(curve, 0.7) == pytest.approx(25.0)  # halfway from 0.6 at 20 s to 0.8 at 30
    assert time_to_reach(curve, 0.1) == 10.0  # reached at the first validation: nothing before it
    assert time_to_reach(curve, 0.8) == 30.0
    assert time_to_reach(curve, 0.9) is None
    dip = [(5.0, 0.5), (9.0, 0.4), (13.0, 0.6)]
    assert time_to_reach(dip, 0.55) == pytest.approx(12.0)

    def row(system: str, n: int, rate: float, accs: list[float], wall: float) -> dict:
        vals = [{"acc": a, "wall_s": wall * (i + 1) / (len(accs) + 1)} for i, a in enumerate(accs)]
        return {"name": f"{system} {n}", "system": system, "n": n, "images_per_s": rate,
                "validations": vals, "wall_s": wall, "exit_code": 0}

    rows = [row("adt", 1, 1000.0, [0.5, 0.8], 90.0), row("adt", 2, 1900.0, [0.6, 0.8], 45.0),
            row("ddp", 1, 1000.0, [0.4, 0.7], 80.0), row("ddp", 2, 1500.0, [0.5, 0.6], 50.0)]
    assert efficiency(rows, rows[1]) == pytest.approx(0.95)
    assert efficiency(rows, rows[3]) == pytest.approx(0.75)
    # adt 1 reaches its own final accuracy at its last validation, 2/3 into its wall time.
    assert reach(rows, rows[0]) == pytest.approx((60.0, 60.0 / 90.0))
    assert reach(rows, rows[1]) == pytest.approx((30.0, 30.0 / 90.0))
    assert reach(rows, rows[3]) == (None, None)  # DDP 2 never gets to 0.8
    met = {what.split(" >=")[0].split(" <=")[0]: ok for what, _, _, ok in targets(rows)}
    assert met == {"adt N=2 images/s / adt 1 GPU": True, "adt N=2 images/s / DDP N=2": True,
                   "DDP N=2 images/s / DDP 1": False,
                   "adt N=2 final acc - adt 1 GPU (points)": True,
                   "adt N=2 time to 1-GPU acc / 1-GPU wall": True}
    text = table(rows[:1])  # a run missing: its cells and targets say so instead of failing
    assert "not measured" in text and "| adt 1 | 1 | 1,000 | 1.00 | - |" in text
