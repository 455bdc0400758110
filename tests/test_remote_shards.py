"""Remote shards: runs read http:// and pipe: shards as they read local ones, and fail by name.

The shards are served by a real `http.server` in a thread of the test, on 127.0.0.1.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from engine.config import RunConfig
from engine.data import resolve_data
from engine.errors import DataError
from engine.preflight import preflight
from engine.remote import ResumingReader

from .conftest import adt_command, child_env
from .jobs import FAST, HeadlessJob

CHANCE = 0.25  # tiny data has 4 classes
TRAIN = "train/train-{000000..000003}.tar"
VAL = "val/val-{000000..000001}.tar"


class ShardServer:
    """A directory over HTTP/1.0 (the stdlib server: no Range support, so resuming skips bytes).

    `cut=(path, n)`: the n-th GET of `path` sends half its body and closes the connection; with
    `stop_after_cut` the server then stops (every later request refused), as a server that dies
    mid-epoch. `etag`, when set, is sent with every response. `gets` counts GETs by path.
    """

    def __init__(self, root: Path, cut: tuple[str, int] = ("", 0), stop_after_cut: bool = False) -> None:
        self.gets: dict[str, int] = {}
        self.etag = ""
        self.stopped = threading.Event()
        owner = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet test output
                pass

            def end_headers(self) -> None:
                if owner.etag:
                    self.send_header("ETag", owner.etag)
                super().end_headers()

            def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
                if self.command == "GET":
                    path = self.path.lstrip("/")
                    owner.gets[path] = owner.gets.get(path, 0) + 1
                    if (path, owner.gets[path]) == cut:
                        data = source.read()
                        outputfile.write(data[: len(data) // 2])  # Content-Length said all of it
                        if stop_after_cut:
                            owner.stop()
                        return
                super().copyfile(source, outputfile)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                      functools.partial(Handler, directory=str(root)))
        self.server.handle_error = lambda *args: None  # a reader closing early is not news
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"{self.base}/{path}"

    def stop(self) -> None:
        if not self.stopped.is_set():
            self.stopped.set()
            # shutdown() waits for serve_forever; a request thread must not wait on itself.
            threading.Thread(target=self._close, daemon=True).start()

    def _close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def close(self) -> None:
        self.stop()
        self._thread.join(10)


@pytest.fixture
def served(tiny_data: Path):
    server = ShardServer(tiny_data)
    yield server
    server.close()


def http_flags(server: ShardServer) -> tuple[str, ...]:
    return ("--train-url", server.url(TRAIN), "--val-url", server.url(VAL))


def val_counts(job: HeadlessJob) -> list[int]:
    return [e["count"] for e in job.events("validation")]


def test_http_run_learns_as_the_local_run_does(served, tiny_data, tmp_path):
    flags = ("--workers", "1", "--epochs", "2", *FAST, "--loader-workers", "1")
    remote = HeadlessJob(tmp_path / "remote", *http_flags(served), *flags)
    assert remote.wait(600) == 0, remote.context()
    local = HeadlessJob(tmp_path / "local", "--data", str(tiny_data), *flags)
    assert local.wait(600) == 0, local.context()
    start = remote.events("run_start")[0]
    assert start["data"]["train"][0] == served.url("train/train-000000.tar")
    assert val_counts(remote) == val_counts(local) == [200, 200]
    remote_acc, local_acc = remote.events("validation")[-1]["acc"], local.events("validation")[-1]["acc"]
    assert remote_acc > CHANCE + 0.35, remote.context()
    assert abs(remote_acc - local_acc) < 0.1, (remote_acc, local_acc)


def test_missing_shard_url_exits_2_naming_it_before_any_process_starts(served, tmp_path):
    missing = served.url("train/train-000004.tar")
    done = subprocess.run(
        adt_command("run", "--no-ui", "--runs-dir", str(tmp_path / "runs"), "--run-id", "job",
                    "--train-url", served.url("train/train-{000000..000004}.tar"),
                    "--val-url", served.url(VAL)),
        capture_output=True, text=True, env=child_env(), timeout=120, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"train shard {missing} cannot be reached: HTTP 404" in done.stderr
    assert "Fix:" in done.stderr
    assert not (tmp_path / "runs" / "job").exists()  # nothing started, nothing written


@pytest.mark.parametrize("workers", ["0", "1"])
def test_server_stopping_mid_epoch_fails_the_run_naming_the_url(tiny_data, tmp_path, workers):
    # The preflight reads only the first shard of each split: train-000002 is first read mid-epoch,
    # by the single process or by the worker (which leaves; the PS's run_end gives its words).
    server = ShardServer(tiny_data, cut=("train/train-000002.tar", 1), stop_after_cut=True)
    try:
        job = HeadlessJob(tmp_path, *http_flags(server), "--workers", workers, "--epochs", "2", *FAST)
        code = job.wait(300)  # retries back off 1+2+4 s, then the run must end: no hang
    finally:
        server.close()
    assert server.stopped.is_set(), job.context()
    assert code == 1, job.context()
    end = job.events("run_end")[-1]
    assert end["outcome"] == "failed", end
    assert f"shard {server.base}/train/train-000002.tar failed at byte" in end["message"], end
    assert "3 retries did not help" in end["message"], end


def test_server_stopping_at_validation_ends_an_async_run_naming_the_url(tiny_data, tmp_path):
    # The PS validates at the end of the epoch; its second read of val-000000 (after the
    # preflight's) is cut and the server stops. Workers waiting at the epoch's end must not hang.
    server = ShardServer(tiny_data, cut=("val/val-000000.tar", 2), stop_after_cut=True)
    try:
        job = HeadlessJob(tmp_path, *http_flags(server), "--workers", "1", "--epochs", "2", *FAST)
        code = job.wait(300)
    finally:
        server.close()
    assert code == 1, job.context()
    end = job.events("run_end")[-1]
    assert end["outcome"] == "failed", end
    assert f"shard {server.base}/val/val-000000.tar failed at byte" in end["message"], end


def test_dropped_connection_resumes_and_every_byte_arrives(tiny_data):
    server = ShardServer(tiny_data, cut=("train/train-000001.tar", 1))
    try:
        with ResumingReader(server.url("train/train-000001.tar"), backoff=0.05) as reader:
            data = reader.read()
    finally:
        server.close()
    assert server.gets["train/train-000001.tar"] == 2  # the cut GET, then one from where it broke
    assert data == (tiny_data / "train" / "train-000001.tar").read_bytes()


def test_pipe_shards_train_and_validate_every_sample(tiny_data, tmp_path):
    job = HeadlessJob(tmp_path, "--train-url", f"pipe:cat {tiny_data}/{TRAIN}",
                      "--val-url", f"pipe:cat {tiny_data}/{VAL}", "--workers", "0", "--epochs", "1",
                      *FAST)
    assert job.wait(300) == 0, job.context()
    assert val_counts(job) == [200]


def test_pipe_command_naming_no_shard_is_refused_by_field(tiny_data):
    config = RunConfig(train_url=f"pipe:cat {tiny_data}/{TRAIN}", val_url="pipe:cat -").validate()
    with pytest.raises(DataError, match=r"^val shard 'pipe:cat -' is a pipe: command that names no \.tar"):
        preflight(config)


def test_remote_size_differing_from_the_manifest_is_named(tiny_data, tmp_path):
    data = Path(shutil.copytree(tiny_data, tmp_path / "data"))
    shard = data / "val" / "val-000001.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    server = ShardServer(data)
    try:
        with pytest.raises(DataError, match=rf"val shard {server.base}/val/val-000001\.tar is 3000 "
                                            "bytes, but its manifest says"):
            preflight(RunConfig(train_url=server.url(TRAIN), val_url=server.url(VAL)).validate())
    finally:
        server.close()


def test_remote_fingerprint_follows_the_servers_etag(served):
    prints = []
    for etag in ('"a"', '"a"', '"b"'):
        served.etag = etag
        prints.append(resolve_data("", served.url(TRAIN), served.url(VAL)).fingerprint())
    assert prints[0] == prints[1] != prints[2]
