"""Multi-node: separate `adt launch` processes form one job, as torchrun nodes on two machines would.

Two launches with `--nnodes 2` on one machine meet over loopback; where network namespaces are
permitted (root), two namespaces joined by a veth pair stand in for two hosts; a private mount
namespace gives one "node" a different copy of the data at the same path.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from adt_tui.history import run_info
from adt_tui.supervisor import Supervisor
from engine.events import read_events

ROOT = Path(__file__).resolve().parent.parent
CHANCE = 0.25  # tiny data has 4 classes
# Small batches and the staleness-aware LR: the tiny data set gives few updates per epoch.
TRAIN_FLAGS = ["--epochs", "6", "--batch-size", "16", "--lr", "0.01", "--update-rule",
               "lr/staleness", "--loader-workers", "0", "--log-interval", "0.5", "--grace-period", "5"]


def adt_launch(*args: str) -> list[str]:
    return [sys.executable, "-m", "adt_tui.cli", "launch", *args]


def node_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_nodes(commands: list[list[str]], out_dir: Path, timeout: float = 300,
              when: Callable[[], bool] | None = None,
              then: Callable[[list[subprocess.Popen]], None] | None = None) -> tuple[list[int], list[str]]:
    """Run the node commands side by side to their end; returns exit codes and outputs.

    Once `when()` is true, `then(launchers)` runs once (to stop the job mid-run).
    Every process any of them started is remembered while it lives, and the test fails if one
    is still running after its node's launcher exited (an orphan).
    """
    logs = [out_dir / f"node{i}.out" for i in range(len(commands))]
    procs = []
    for cmd, log in zip(commands, logs, strict=True):
        with open(log, "w") as f:
            procs.append(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=node_env(), cwd=out_dir))
    seen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            for p in procs:
                try:
                    for child in psutil.Process(p.pid).children(recursive=True):
                        seen.setdefault(child.pid, child)
                except psutil.NoSuchProcess:
                    pass
            if when is not None and then is not None and when():
                then(procs)
                when = None
            time.sleep(0.3)
        timed_out = any(p.poll() is None for p in procs)
        orphans = [c for c in seen.values() if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    finally:
        for proc in [*procs, *seen.values()]:
            try:
                proc.kill()
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass
        for p in procs:
            p.wait()
        psutil.wait_procs(list(seen.values()), timeout=5)
    outputs = [log.read_text() for log in logs]
    assert not timed_out, "a node did not finish:\n" + "\n----\n".join(outputs)
    assert not orphans, f"processes outlived their node: {orphans}"
    return [p.returncode for p in procs], outputs


def all_workers_training(events: Path) -> bool:
    return events.exists() and {e["worker"] for e in read_events(events)
                                if e["kind"] == "worker_metrics"} == {0, 1, 2}


def two_node_commands(data: Path, tmp: Path, master: str, run_id: str, extra: list[list[str]] | None = None,
                      wrap: list[list[str]] | None = None) -> list[list[str]]:
    """`adt launch` for node 0 (PS + worker 0) and node 1 (workers 1 and 2)."""
    common = ["--nnodes", "2", "--nproc-per-node", "2", "--master", master]
    node0 = adt_launch(*common, "--node-rank", "0", "--data", str(data), "--run-id", run_id,
                       "--runs-dir", str(tmp / "runs"), "--checkpoints-dir", str(tmp / "checkpoints"),
                       *TRAIN_FLAGS, *(extra[0] if extra else []))
    node1 = adt_launch(*common, "--node-rank", "1", "--grace-period", "5", *(extra[1] if extra else []))
    wrap = wrap or [[], []]
    return [[*wrap[0], *node0], [*wrap[1], *node1]]


def assert_one_job_over_both_nodes(tmp: Path, run_id: str, codes: list[int], outputs: list[str]) -> None:
    assert codes == [0, 0], "\n----\n".join(outputs)
    events = list(read_events(tmp / "runs" / run_id / "events.jsonl"))
    start = next(e for e in events if e["kind"] == "run_start")
    assert start["workers"] == 3 and start["mode"] == "async"
    joins = [e for e in events if e["kind"] == "worker_join"]
    assert sorted(e["worker"] for e in joins) == [0, 1, 2]
    assert {e["node"] for e in joins} == {0, 1}
    assert {(e["node"], e["local_rank"]) for e in joins} == {(0, 1), (1, 0), (1, 1)}
    # Devices come from the run's config, placed once on node 0 (no GPU here: the CPU), and reach
    # node 1's workers, which have no run dir, through the rendezvous store.
    assert (start["config"]["device"], start["config"]["ps_device"], start["device"]) == ("cpu", "cpu", "cpu")
    assert [e["device"] for e in joins] == ["cpu"] * 3
    assert {e["worker"] for e in events if e["kind"] == "worker_metrics"} == {0, 1, 2}
    accs = [e["acc"] for e in events if e["kind"] == "validation"]
    assert max(accs) > 0.6 and accs[-1] > CHANCE, accs
    assert [e["outcome"] for e in events if e["kind"] == "run_end"] == ["finished"]
    assert (tmp / "checkpoints" / run_id / "last.pt").is_file()


def test_two_launches_on_loopback_form_one_job_that_learns(tiny_data, tmp_path):
    master = f"127.0.0.1:{free_port()}"
    codes, outputs = run_nodes(two_node_commands(tiny_data, tmp_path, master, "two-nodes"), tmp_path)
    assert_one_job_over_both_nodes(tmp_path, "two-nodes", codes, outputs)
    assert "torchrun --nnodes 2 --node-rank 0 --nproc-per-node 2 --master-addr 127.0.0.1" in outputs[0]
    assert "run finished" in outputs[0]
    assert "placement: worker 0 -> cpu, PS -> cpu" in outputs[0]


def test_ctrl_c_on_node_0_stops_the_whole_job_with_a_final_checkpoint(tiny_data, tmp_path):
    events = tmp_path / "runs" / "stop" / "events.jsonl"
    commands = two_node_commands(tiny_data, tmp_path, f"127.0.0.1:{free_port()}", "stop",
                                 extra=[["--epochs", "500"], []])
    codes, outputs = run_nodes(commands, tmp_path, when=lambda: all_workers_training(events),
                               then=lambda launchers: launchers[0].send_signal(signal.SIGINT))
    assert codes[0] == 130, outputs[0]
    assert "stopping this node" in outputs[0]
    ends = [e for e in read_events(events) if e["kind"] == "run_end"]
    assert [e["outcome"] for e in ends] == ["stopped"], outputs[0]
    assert (tmp_path / "checkpoints" / "stop" / "last.pt").is_file()


def test_the_monitor_attaches_to_a_launched_run_and_stops_it(tiny_data, tmp_path):
    """`adt watch` on node 0 finds the job through pids.json and stops it like a local one."""
    run_dir = tmp_path / "runs" / "watched"
    attached: list[Supervisor] = []

    def stop_from_the_monitor(_launchers: list[subprocess.Popen]) -> None:
        attached.append(Supervisor.attach(run_dir))
        assert [c.name for c in attached[0].children if c.running] == ["torchrun"]
        assert run_info(run_dir).state == "running"
        attached[0].stop(grace=20)

    commands = two_node_commands(tiny_data, tmp_path, f"127.0.0.1:{free_port()}", "watched",
                                 extra=[["--epochs", "500"], []])
    codes, outputs = run_nodes(commands, tmp_path, when=lambda: all_workers_training(run_dir / "events.jsonl"),
                               then=stop_from_the_monitor)
    assert attached and codes[0] == 130, outputs[0]
    assert run_info(run_dir).state == "stopped"
    assert (tmp_path / "checkpoints" / "watched" / "last.pt").is_file()


def test_launch_dry_run_prints_torchrun_lines_and_writes_only_the_config(tiny_data, tmp_path):
    result = subprocess.run(
        adt_launch("--nnodes", "2", "--node-rank", "0", "--master", "10.0.0.1:29500", "--dry-run",
                   "--data", str(tiny_data), "--run-id", "planned", "--runs-dir", str(tmp_path / "runs")),
        env=node_env(), capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "torchrun --nnodes 2 --node-rank 0 --nproc-per-node 2 --master-addr 10.0.0.1" in result.stdout
    assert "--run-dir " + str((tmp_path / "runs" / "planned").resolve()) in result.stdout
    assert "adt launch --nnodes 2 --node-rank K" in result.stdout
    assert "unauthenticated" in result.stdout
    assert sorted(p.name for p in (tmp_path / "runs" / "planned").iterdir()) == ["config.json", "logs"]


def test_launch_refuses_a_worker_count_the_nodes_do_not_make(tiny_data, tmp_path):
    result = subprocess.run(
        adt_launch("--nnodes", "2", "--nproc-per-node", "2", "--workers", "5", "--dry-run",
                   "--data", str(tiny_data), "--runs-dir", str(tmp_path / "runs")),
        env=node_env(), capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "'workers'" in result.stderr and "makes 3 workers" in result.stderr
    assert not (tmp_path / "runs").exists()


def _root_can(cmd: list[str]) -> bool:
    if os.geteuid() != 0 or shutil.which(cmd[0]) is None:
        return False
    return subprocess.run(cmd, check=False, capture_output=True).returncode == 0


@pytest.fixture
def two_hosts():
    """Two network namespaces joined by a veth pair: (namespace, address, interface) per host."""
    tag = uuid.uuid4().hex[:6]
    hosts = [(f"adt-{tag}-{i}", f"10.77.0.{i + 1}", f"adt{tag}{i}") for i in range(2)]
    if not _root_can(["ip", "netns", "add", hosts[0][0]]):
        pytest.skip("network namespaces are not permitted here (needs root and `ip netns`)")
    try:
        setup = [["ip", "netns", "add", hosts[1][0]],
                 ["ip", "link", "add", hosts[0][2], "type", "veth", "peer", "name", hosts[1][2]]]
        for ns, address, ifname in hosts:
            setup += [["ip", "link", "set", ifname, "netns", ns],
                      ["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", ifname],
                      ["ip", "-n", ns, "link", "set", ifname, "up"],
                      ["ip", "-n", ns, "link", "set", "lo", "up"]]
        for cmd in setup:
            result = subprocess.run(cmd, check=False, capture_output=True, text=True)
            if result.returncode != 0:
                pytest.skip(f"cannot set up the veth pair ({' '.join(cmd)}: {result.stderr.strip()})")
        yield hosts
    finally:
        for ns, _, _ in hosts:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def test_two_nodes_in_separate_network_namespaces_form_one_job(tiny_data, tmp_path, two_hosts):
    (ns0, address0, if0), (ns1, _, if1) = two_hosts
    commands = two_node_commands(tiny_data, tmp_path, f"{address0}:29500", "two-hosts",
                                 extra=[["--ifname", if0], ["--ifname", if1]],
                                 wrap=[["ip", "netns", "exec", ns0], ["ip", "netns", "exec", ns1]])
    codes, outputs = run_nodes(commands, tmp_path)
    assert_one_job_over_both_nodes(tmp_path, "two-hosts", codes, outputs)


def test_node_with_a_different_copy_of_the_data_refuses_and_the_ps_alerts(tiny_data, tmp_path):
    """Node 1 sees other data at the same path (a private mount namespace): its workers refuse."""
    if not _root_can(["unshare", "--mount", "true"]):
        pytest.skip("private mount namespaces are not permitted here (needs root and `unshare`)")
    from engine.synth import write_synthetic

    other = write_synthetic(tmp_path / "other-data", num_classes=4, image_size=16, train_samples=400,
                            val_samples=80, train_shards=4, val_shards=2, seed=1, progress=False)
    mount_other = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   f'mount --bind "{other}" "{tiny_data}" && exec "$0" "$@"']
    master = f"127.0.0.1:{free_port()}"
    commands = two_node_commands(tiny_data, tmp_path, master, "mismatch", extra=[["--epochs", "1"], []],
                                 wrap=[[], mount_other])
    codes, outputs = run_nodes(commands, tmp_path)
    assert codes[1] != 0, outputs[1]
    assert "refusing to train" in outputs[1] and "differs from the parameter server's" in outputs[1]
    events = list(read_events(tmp_path / "runs" / "mismatch" / "events.jsonl"))
    alerts = [e for e in events if e["kind"] == "alert" and e["code"] == "data_mismatch"]
    assert sorted(e["worker"] for e in alerts) == [1, 2], events
    assert [e["worker"] for e in events if e["kind"] == "worker_join"] == [0]
    assert [e["outcome"] for e in events if e["kind"] == "run_end"] == ["finished"]
    assert codes[0] == 0, outputs[0]


def test_a_failed_process_fails_the_node_with_exit_1_naming_it(tiny_data, tmp_path):
    """torchrun stops a node's other processes when one fails, the PS among them, which calls that
    "stopped": the launch must still say failed (exit 1), and who failed first."""
    run_id = "broken"
    events = tmp_path / "runs" / run_id / "events.jsonl"
    command = adt_launch("--nnodes", "1", "--node-rank", "0", "--nproc-per-node", "3", "--master",
                         f"127.0.0.1:{free_port()}", "--data", str(tiny_data), "--run-id", run_id,
                         "--runs-dir", str(tmp_path / "runs"), "--checkpoints-dir",
                         str(tmp_path / "checkpoints"), *TRAIN_FLAGS, "--epochs", "500")

    def kill_worker_1(_launchers: list[subprocess.Popen]) -> None:
        pid = next(e["pid"] for e in read_events(events) if e["kind"] == "worker_join" and e["worker"] == 1)
        os.kill(pid, signal.SIGKILL)

    def both_train() -> bool:
        return events.exists() and {e["worker"] for e in read_events(events)
                                    if e["kind"] == "worker_metrics"} == {0, 1}

    [code], [output] = run_nodes([command], tmp_path, when=both_train, then=kill_worker_1)
    assert code == 1, output
    assert "node 0 failed: torchrun exited with code 1: worker 1 (rank 2) failed first with exit code -9; see" in output
