"""bench/staleness_sim.py: `--speeds` takes positive times per gradient and refuses anything else
with exit 2 and one line naming the flag and the fix, before any data or model is made."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.staleness_sim import speeds_arg
from tests.conftest import ROOT, child_env


def test_speeds_reads_positive_times_per_gradient():
    assert speeds_arg("1,1.5,2") == [1.0, 1.5, 2.0]


@pytest.mark.parametrize("bad", ["1,x", "1,0", "-1", "inf", ""])
def test_bad_speeds_exit_2_naming_the_flag_and_the_fix(bad, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.staleness_sim", "--speeds", bad,
                           "--workdir", str(tmp_path)], cwd=ROOT, env=child_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "--speeds" in proc.stderr and "Fix: positive numbers" in proc.stderr, proc.stderr
    assert not any(tmp_path.iterdir())  # refused before any data was written
