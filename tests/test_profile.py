"""`ADT_PROFILE=DIR`: a real run writes each training process's profile of steps 30..39."""

from __future__ import annotations

import re
import subprocess

from .conftest import adt_command, child_env
from .jobs import FAST


def test_a_profiled_run_writes_the_step_profile(tiny_data, tmp_path):
    env = {**child_env(), "ADT_PROFILE": str(tmp_path / "prof")}
    done = subprocess.run(adt_command("run", "--no-ui", "--data", str(tiny_data), "--workers", "0", "--epochs", "1",
                                      "--runs-dir", str(tmp_path / "runs"), "--checkpoints-dir", str(tmp_path / "ck"),
                                      *FAST), capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    text = (tmp_path / "prof" / "single.txt").read_text()
    wall, busy = map(float, re.search(r"steps profiled: 10; wall per step ([\d.]+) ms; "
                                      r"GPU busy per step ([\d.]+) ms", text).groups())
    assert wall > 0 and busy == 0  # no GPU here, so no GPU time
    assert "top by host time:" in text and "aten::convolution" in text
