"""`--mps`: the job's own MPS daemon, started before its processes and gone after them.

This machine has no GPU and no NVIDIA driver, so `nvidia-cuda-mps-control` here is a stand-in
script on PATH that speaks the same command line (`-f` runs the daemon; `get_server_list` and
`quit` on stdin, failing while no daemon runs). What is under test is adt's side: the keeper,
the private pipe folder handed to the job's processes, and that nothing outlives the job. The
real daemon runs under the GPU benchmark (bench/gpu_speed.sh).
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from .conftest import adt_command, child_env
from .jobs import FAST, HeadlessJob, wait_for

STAND_IN = f"""#!{sys.executable}
import os, pathlib, sys, time
folder = pathlib.Path(os.environ["CUDA_MPS_PIPE_DIRECTORY"])
if sys.argv[1:] == ["-f"]:
    if os.environ.get("MPS_STAND_IN_BROKEN"):
        sys.exit(3)  # as a daemon that cannot start (e.g. the GPU is in exclusive mode)
    with open(os.environ["MPS_STAND_IN_LOG"], "a") as log:
        log.write(f"{{os.getpid()}} {{folder}}\\n")
    (folder / "daemon").touch()
    while not (folder / "quit").exists():
        time.sleep(0.05)
    sys.exit(0)
if not (folder / "daemon").exists():
    sys.exit("Cannot find MPS control daemon process")
if sys.stdin.read().strip() == "quit":
    (folder / "quit").touch()
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def stand_in(tmp_path, monkeypatch) -> Path:
    """Put the stand-in on PATH; returns the log of the daemons it started ("pid folder" lines)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-cuda-mps-control"
    script.write_text(STAND_IN)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "daemons.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MPS_STAND_IN_LOG", str(log))
    return log


def daemons(log: Path) -> list[tuple[int, Path]]:
    return [(int(pid), Path(folder)) for pid, folder in (line.split() for line in log.read_text().splitlines())]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def job_flags(data: Path, epochs: str) -> tuple[str, ...]:
    # --device auto: the CPU here; on a GPU machine it would be the one the workers share.
    return ("--data", str(data), "--mps", "--device", "auto", "--workers", "2", "--epochs", epochs, *FAST)


def test_the_jobs_processes_get_the_daemon_and_it_is_gone_after_the_run(tiny_data, tmp_path, stand_in, leftover_guard):
    job = HeadlessJob(tmp_path, *job_flags(tiny_data, "3"))  # long enough to read the environments
    job.wait_event("worker_metrics", 120)
    [(daemon, folder)] = daemons(stand_in)
    assert alive(daemon) and folder.is_dir()
    for name, pid in job.pids().items():
        env = psutil.Process(pid).environ()
        assert env.get("CUDA_MPS_PIPE_DIRECTORY") == str(folder), name
    assert job.wait(300) == 0, job.context()
    assert not alive(daemon) and not folder.exists()
    assert leftover_guard() == []


def test_a_killed_runner_leaves_no_daemon_once_the_job_ends(tiny_data, tmp_path, stand_in, leftover_guard):
    # Long enough to outlive its runner's kill on a fast machine (2 epochs once ended before it).
    job = HeadlessJob(tmp_path, *job_flags(tiny_data, "8"))
    job.wait_event("worker_metrics", 120)
    [(daemon, folder)] = daemons(stand_in)
    pids = list(job.pids().values())
    job.proc.send_signal(signal.SIGKILL)  # the job trains on without its runner
    job.wait(30)
    keeper = next(p for p in psutil.process_iter(["cmdline"]) if "adt_tui.mps" in (p.info["cmdline"] or []))
    wait_for("the job to end on its own", lambda: not any(alive(p) for p in pids), 300, job.context)
    wait_for("the keeper to quit the daemon", lambda: not alive(daemon), 60, job.context)
    keeper.wait(30)
    assert not folder.exists()
    assert leftover_guard() == []


def test_a_killed_keeper_takes_its_daemon_along(tiny_data, tmp_path, stand_in, leftover_guard):
    job = HeadlessJob(tmp_path, *job_flags(tiny_data, "200"))
    job.wait_event("worker_metrics", 120)
    [(daemon, _)] = daemons(stand_in)
    keeper = next(p for p in psutil.Process(job.proc.pid).children() if "adt_tui.mps" in p.cmdline())
    keeper.kill()
    wait_for("the daemon to follow its keeper", lambda: not alive(daemon), 60, job.context)
    job.proc.send_signal(signal.SIGINT)  # the job itself goes on until stopped, as a Ctrl+C does
    assert job.wait(120) == 130, job.context()
    assert leftover_guard() == []


def test_ctrl_c_while_the_job_starts_leaves_nothing(tiny_data, tmp_path, stand_in, leftover_guard):
    job = HeadlessJob(tmp_path, *job_flags(tiny_data, "200"))
    wait_for("the daemon to start", lambda: daemons(stand_in), 120, job.context)
    job.proc.send_signal(signal.SIGINT)  # the runner is between the daemon and the job's processes
    code = job.wait(120)
    [(daemon, folder)] = daemons(stand_in)
    wait_for("every process of the job to end", lambda: leftover_guard() == [], 60, job.context)
    assert code == 130 and not alive(daemon) and not folder.exists(), job.context()


@pytest.mark.parametrize("flags, why", [
    (("--device", "auto"), "nvidia-cuda-mps-control` is not on PATH"),
    (("--device", "cpu"), "device is 'cpu'"),
])
def test_mps_that_cannot_work_is_refused_before_anything_starts(tmp_path, flags, why):
    done = subprocess.run(adt_command("run", "--no-ui", "--mps", *flags, "--runs-dir", str(tmp_path / "runs")),
                          capture_output=True, text=True, env=child_env(), timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "'mps'" in done.stderr and why in done.stderr
    assert not (tmp_path / "runs").exists()


def test_a_daemon_that_does_not_start_fails_the_run_before_training(tiny_data, tmp_path, stand_in, monkeypatch):
    monkeypatch.setenv("MPS_STAND_IN_BROKEN", "1")
    done = subprocess.run(adt_command("run", "--no-ui", *job_flags(tiny_data, "1"), "--runs-dir", str(tmp_path / "runs")),
                          capture_output=True, text=True, env=child_env(), timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "'mps'" in done.stderr and "nvidia-cuda-mps-control -f exited with code 3" in done.stderr
    [run_dir] = (tmp_path / "runs").iterdir()
    assert not (run_dir / "pids.json").exists()  # no process of the job was started


@pytest.mark.anyio
async def test_the_monitor_says_why_and_exits_2_when_the_daemon_does_not_start(tiny_data, tmp_path, stand_in,
                                                                                monkeypatch):
    from adt_tui.app import AdtApp

    from .conftest import tiny_config

    monkeypatch.setenv("MPS_STAND_IN_BROKEN", "1")
    app = AdtApp(tiny_config(tiny_data, tmp_path, mps=True, device="auto"), source_dirs=[tmp_path / "src"])
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
    assert app.return_code == 2
    assert app.supervisor is not None and not app.supervisor.children


def test_the_jobs_processes_see_the_gpus_as_the_mps_server_numbers_them():
    """A daemon started under CUDA_VISIBLE_DEVICES=1 serves that GPU as its device 0: a client
    still asking for GPU 1 found "No CUDA GPUs are available" (two H200s, --mps)."""
    from adt_tui.mps import client_devices

    assert client_devices(None) == {}
    assert client_devices("1") == {"CUDA_VISIBLE_DEVICES": "0"}
    assert client_devices("3,5") == {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert client_devices("GPU-94b5bd2a") == {"CUDA_VISIBLE_DEVICES": "0"}
