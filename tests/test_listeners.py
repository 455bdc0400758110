"""Loopback means loopback: every socket a real job's processes listen on, measured with psutil.

Each job runs until a worker has pushed metrics (by then every process has joined RPC, so every
listener is open), then its whole process tree is inspected and the job is stopped with Ctrl+C.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import psutil

from engine.listen import is_loopback

from .conftest import adt_command, child_env
from .jobs import HeadlessJob, events_of, wait_for

ROOT = Path(__file__).resolve().parent.parent
# Default settings (one loader process per worker included), only a long run on tiny data.
LONG = ("--epochs", "500", "--batch-size", "16", "--log-interval", "0.5", "--grace-period", "10")


def listeners(root: int) -> list[tuple[str, str, int]]:
    """(process, address, port) of every TCP listener and bound UDP socket of `root`'s tree."""
    found = []
    top = psutil.Process(root)
    for proc in [top, *top.children(recursive=True)]:
        try:
            name = " ".join(proc.cmdline()[1:5])
            for conn in proc.net_connections(kind="inet"):
                udp = conn.type == socket.SOCK_DGRAM and not conn.raddr
                if conn.status == psutil.CONN_LISTEN or udp:
                    found.append((f"{proc.pid} {name}", conn.laddr.ip, conn.laddr.port))
        except psutil.NoSuchProcess:  # a loader process that just ended holds no socket
            pass
    return found


def store_port(root: int) -> int:
    """MASTER_PORT of the job's PS: the port its rendezvous store listens on."""
    ps = next(p for p in psutil.Process(root).children(recursive=True)
              if "--role" in p.cmdline() and "ps" in p.cmdline())
    return int(ps.environ()["MASTER_PORT"])


def measure(job: HeadlessJob) -> tuple[list[tuple[str, str, int]], int]:
    """The listeners of a running job's tree once it trains, and its store's port; stops the job."""
    try:
        job.wait_event("worker_metrics", 240)
        return listeners(job.proc.pid), store_port(job.proc.pid)
    finally:
        job.proc.send_signal(signal.SIGINT)
        job.wait(120)


def test_default_job_listens_on_loopback_only(tiny_data, tmp_path):
    job = HeadlessJob(tmp_path, "--data", str(tiny_data), *LONG)
    found, port = measure(job)
    assert any(port == p for _, _, p in found), f"no store listener on {port}: {found}"
    outside = [entry for entry in found if not is_loopback(entry[1])]
    assert not outside, f"listening beyond loopback: {outside}\n{job.output}"
    assert "listens on:" in job.output and "unauthenticated" not in job.output


def test_job_on_every_interface_warns_and_lists_what_it_opens(tiny_data, tmp_path):
    with socket.socket() as probe:  # a fixed port, so the warning can name it
        probe.bind(("127.0.0.1", 0))
        chosen = probe.getsockname()[1]
    job = HeadlessJob(tmp_path, "--data", str(tiny_data), "--host", "0.0.0.0", "--port", str(chosen),
                      *LONG)
    found, port = measure(job)
    assert port == chosen
    warning = next((line for line in job.lines if line.startswith("WARNING: the job listens")), "")
    assert "unauthenticated" in warning and f"port {chosen}" in warning, job.output
    # Every listener is one the start of the run listed: the store where --host says, the rest on
    # the address printed for TensorPipe and Gloo.
    peers = next(line for line in job.lines if "TensorPipe (RPC) and Gloo" in line)
    peer_address = peers.split(": ", 1)[1].split()[0]
    assert ("0.0.0.0", chosen) in {(ip, p) for _, ip, p in found}, found
    unlisted = [e for e in found if (e[1], e[2]) != ("0.0.0.0", chosen) and e[1] != peer_address]
    assert not unlisted, f"listeners the run did not list: {unlisted}\n{job.output}"


def test_launch_listens_on_loopback_except_torchruns_own_store(tiny_data, tmp_path):
    """Under torchrun only its agent's store listens beyond loopback, as `adt launch` says."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        master = probe.getsockname()[1]
    events = tmp_path / "runs" / "launch" / "events.jsonl"
    cmd = adt_command("launch", "--nnodes", "1", "--nproc-per-node", "3",
                      "--master", f"127.0.0.1:{master}", "--data", str(tiny_data), "--run-id", "launch",
                      "--runs-dir", str(tmp_path / "runs"), "--checkpoints-dir",
                      str(tmp_path / "checkpoints"), *LONG)
    out = tmp_path / "launch.out"
    with open(out, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT)
    try:
        def training() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"adt launch exited ({proc.returncode})\n{out.read_text()}")
            return bool(events_of(events, "worker_metrics"))

        wait_for("worker_metrics", training, 240, out.read_text)
        found = listeners(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(120)
    outside = [e for e in found if not is_loopback(e[1])]
    assert [(ip, p) for _, ip, p in outside] == [("::", master)], found
    assert "torch.distributed.run" in outside[0][0]  # torchrun's agent, not one of adt's processes
    text = out.read_text()
    assert f"every interface (::, IPv4 and IPv6), port {master}" in text
    assert "127.0.0.1 (lo)" in text
