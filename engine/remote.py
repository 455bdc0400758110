"""Shards that are not local files: `http(s)://` URLs and WebDataset's `pipe:COMMAND`.

HTTP goes through the standard library only (no curl). What this module knows how to do:
- name a shard as its manifest lists it, and find the manifest beside it (`manifest_location`);
- `stat_http`: does a shard exist, how big is it, its ETag (HEAD, or a one-byte ranged GET where
  a server refuses HEAD), for the preflight and the data fingerprint;
- `open_shard`: a stream that survives a dropped connection or a failed command by reopening at
  the byte it reached (HTTP Range, or re-running the command and skipping what was read), a
  bounded number of times with backoff, then fails naming the URL. It never skips a shard:
  validation must see every sample once.

A `pipe:` shard cannot be stat'ed without running its command, which may download the whole
shard, so before a run only its program (on PATH) and its manifest are checked. The manifest is
read by the same command with the shard's file name replaced by manifest.json
(`pipe:curl -s http://h/train/train-000000.tar` -> `pipe:curl -s http://h/train/manifest.json`),
so the command must name the shard's `.tar` file.
"""

from __future__ import annotations

import http.client
import io
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import BinaryIO, Protocol
from urllib.parse import urljoin, urlsplit

from .errors import DataError
from .shards import MANIFEST

HTTP = ("http://", "https://")
PIPE = "pipe:"
STAT_TIMEOUT = 10.0  # seconds for a HEAD or a manifest: the preflight must not hang on a dead host
READ_TIMEOUT = 30.0  # seconds without a byte before a shard read counts as failed
RETRIES = 3  # reopenings after a failure before the run fails; the count restarts once bytes flow
BACKOFF = 1.0  # seconds before the first reopening, doubling each time

# The shard's file name inside a pipe command: the last `<name>.tar` token (path or URL tail).
_TAR_IN_COMMAND = re.compile(r"[^\s'\"/=]+\.tar(?=$|[\s'\"?#|;&)])")


def is_remote(url: str) -> bool:
    return url.startswith((*HTTP, PIPE))


def is_pipe(url: str) -> bool:
    return url.startswith(PIPE)


def shard_name(url: str) -> str:
    """The shard's file name as manifest.json lists it ("" for a pipe command naming no .tar)."""
    if is_pipe(url):
        found = _TAR_IN_COMMAND.findall(url)
        return found[-1] if found else ""
    if url.startswith(HTTP):
        return posixpath.basename(urlsplit(url).path)
    return os.path.basename(url)


def manifest_location(url: str) -> str:
    """Where the manifest beside shard `url` is: a path, an http(s) URL or a pipe: command."""
    if is_pipe(url):
        name = shard_name(url)
        if not name:
            raise DataError(f"shard {url!r} is a pipe: command that names no .tar file, so adt cannot "
                            f"find the {MANIFEST} beside it. Fix: name the shard in the command "
                            "(e.g. pipe:curl -s http://host/train/train-000000.tar).")
        at = url.rfind(name)
        return url[:at] + MANIFEST + url[at + len(name):]
    if url.startswith(HTTP):
        return urljoin(url, MANIFEST)
    return os.path.join(os.path.dirname(url), MANIFEST)


def folder_of(manifest: str) -> str:
    """The shards' folder, for people: the manifest's location without its file name."""
    if is_pipe(manifest):
        return manifest
    return manifest[: -len(MANIFEST)].rstrip("/") if manifest.endswith(MANIFEST) else manifest


def read_small(location: str, timeout: float = STAT_TIMEOUT) -> bytes:
    """A small file such as a manifest, from a path, an http(s) URL or a pipe: command.

    Raises OSError with a readable reason.
    """
    if location.startswith(HTTP):
        with urllib.request.urlopen(location, timeout=timeout) as response:
            return response.read()
    if is_pipe(location):
        try:
            done = subprocess.run(location[len(PIPE):], shell=True, capture_output=True,
                                  stdin=subprocess.DEVNULL, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise OSError(f"`{location[len(PIPE):]}` did not finish in {timeout:.0f}s") from None
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise OSError(f"`{location[len(PIPE):]}` exited with status {done.returncode} {tail[0]}".strip())
        return done.stdout
    with open(location, "rb") as f:
        return f.read()


def missing_program(url: str) -> str | None:
    """The program a pipe: command runs, when it is not on PATH (None when found or not knowable)."""
    try:
        words = shlex.split(url[len(PIPE):])
    except ValueError:
        return None
    if not words or "=" in words[0]:  # `VAR=value cmd ...`: leave it to the shell
        return None
    return None if shutil.which(words[0]) else words[0]


def why(exc: BaseException) -> str:
    """A failed request's reason in a few words: 'HTTP 404 Not Found', 'connection refused', ..."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc) or type(exc).__name__


@dataclass(frozen=True)
class ShardStat:
    """What a server says about a shard: its size in bytes (None if it does not say) and ETag."""

    size: int | None
    etag: str = ""


def stat_http(url: str, timeout: float = STAT_TIMEOUT) -> ShardStat:
    """HEAD the shard, or GET its first byte where HEAD is refused; raises OSError when absent."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as response:
            return _stat_of(response)
    except urllib.error.HTTPError as exc:
        if exc.code not in (403, 405, 501):  # signed URLs refuse HEAD with 403; others with 405/501
            raise
    ranged = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
    with urllib.request.urlopen(ranged, timeout=timeout) as response:
        return _stat_of(response)  # closing unread drops the connection, whatever the server sent


def _stat_of(response: http.client.HTTPResponse) -> ShardStat:
    etag = response.headers.get("ETag", "")
    if response.status == 206:  # Content-Range: bytes 0-0/SIZE
        total = response.headers.get("Content-Range", "").rpartition("/")[2]
        return ShardStat(int(total) if total.isdigit() else None, etag)
    length = response.headers.get("Content-Length")
    return ShardStat(int(length) if length and length.isdigit() else None, etag)


class _Source(Protocol):
    def readinto(self, buffer: memoryview) -> int: ...
    def close(self) -> None: ...


class _HttpSource:
    """One GET from `offset` on; a body that ends before its Content-Length is an error."""

    def __init__(self, url: str, offset: int) -> None:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        self.response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                               timeout=READ_TIMEOUT)
        length = self.response.headers.get("Content-Length")
        self.remaining = int(length) if length and length.isdigit() else None
        if offset and self.response.status != 206:  # the server ignored the Range: skip what we have
            _skip(self, offset)

    def readinto(self, buffer: memoryview) -> int:
        n = self.response.readinto(buffer)
        if n == 0 and self.remaining:  # http.client returns 0 here rather than raising
            raise http.client.IncompleteRead(b"", self.remaining)
        if self.remaining is not None:
            self.remaining -= n
        return n

    def close(self) -> None:
        self.response.close()


class _PipeSource:
    """The command's stdout from `offset` on; a non-zero exit at the end is an error."""

    def __init__(self, url: str, offset: int) -> None:
        # Same process group as the reader: stopping the job stops the command with it.
        self.proc = subprocess.Popen(url[len(PIPE):], shell=True, stdout=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL)
        _skip(self, offset)

    def readinto(self, buffer: memoryview) -> int:
        assert self.proc.stdout is not None
        n = self.proc.stdout.readinto(buffer)
        if n == 0 and self.proc.wait() != 0:
            raise OSError(f"the command exited with status {self.proc.returncode}")
        return n

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _skip(source: _Source, count: int) -> None:
    scratch = memoryview(bytearray(1 << 16))
    while count > 0:
        n = source.readinto(scratch[: min(count, len(scratch))])
        if n == 0:
            raise OSError(f"the shard ended before byte {count} on reopening")
        count -= n


class ResumingReader(io.RawIOBase):
    """A remote shard's bytes in order; after a failure it reopens at the byte it reached.

    `RETRIES` failures in a row without a byte in between fail with a DataError naming the URL.
    """

    def __init__(self, url: str, retries: int | None = None, backoff: float | None = None) -> None:
        super().__init__()
        self.url = url
        self.retries = RETRIES if retries is None else retries
        self.backoff = BACKOFF if backoff is None else backoff
        self._open = _PipeSource if is_pipe(url) else _HttpSource
        self._source: _Source | None = None
        self._offset = 0
        self._failures = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while True:
            try:
                if self._source is None:
                    self._source = self._open(self.url, self._offset)
                n = self._source.readinto(buffer)
            except urllib.error.HTTPError as exc:
                if 400 <= exc.code < 500 and exc.code not in (408, 429):  # not transient: no retry
                    self._drop()
                    raise DataError(f"shard {self.url} cannot be read: {why(exc)}. Fix: check that "
                                    "the server still serves it.") from None
                self._failed(exc)
            except (OSError, http.client.HTTPException) as exc:
                self._failed(exc)
            else:
                if n:
                    self._failures = 0
                self._offset += n
                return n

    def _failed(self, exc: BaseException) -> None:
        self._drop()
        self._failures += 1
        if self._failures > self.retries:
            raise DataError(f"shard {self.url} failed at byte {self._offset}: {why(exc)}, and "
                            f"{self.retries} retries did not help. Fix: check that the server (or "
                            "the command) is up and serves the shard, then resume the run "
                            "(--resume RUN_ID).") from None
        time.sleep(self.backoff * 2 ** (self._failures - 1))

    def _drop(self) -> None:
        if self._source is not None:
            try:
                self._source.close()
            except Exception:  # a broken connection may fail to close; it is gone either way
                pass
            self._source = None

    def close(self) -> None:
        self._drop()
        super().close()


def open_shard(url: str) -> BinaryIO:
    """A shard's bytes: a local file, or a buffered ResumingReader for http(s) and pipe: URLs."""
    if not is_remote(url):
        return open(url, "rb")
    return io.BufferedReader(ResumingReader(url), 1 << 16)  # type: ignore[return-value]
