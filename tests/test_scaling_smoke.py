"""The DDP baseline of bench/scaling.py runs under torchrun on the CPU (gloo) and reports one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT, child_env


def test_ddp_baseline_reports_every_ranks_images(tiny_data):
    steps, batch = 5, 32
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "bench.ddp", "--data", str(tiny_data), "--model", "cnn", "--batch", str(batch),
           "--steps", str(steps), "--warmup", "2", "--loader-workers", "1", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, f"only rank 0 prints, once: {proc.stdout!r}"
    result = json.loads(lines[0])
    assert result["world_size"] == 2 and result["backend"] == "gloo"
    # Each rank reads 2 of the 4 shards (600 samples): 7 steps of 32 stay in one epoch, all batches full.
    assert result["images"] == 2 * steps * batch
    assert result["images_per_s"] > 0 and result["seconds"] > 0
