"""The files of a tar stream, read in one pass: (name, bytes) of each regular file.

Python's tarfile parses every 512-byte header in Python (about 25 µs a member, two members a
sample); at 64 px that was over a quarter of a loader process's time. This reader handles the
formats shard writers produce: ustar and GNU (long names), pax (long names); compressed shards
fall back to tarfile.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from typing import BinaryIO

BLOCK = 512
GZIP, BZIP2, XZ = b"\x1f\x8b", b"BZh", b"\xfd7zXZ"


class TarFormatError(Exception):
    """The stream is not a readable tar file; the message says what is wrong."""


def tar_files(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular file, in order. Raises TarFormatError."""
    first = _read(stream, BLOCK)
    if first.startswith((GZIP, BZIP2, XZ)):
        yield from _compressed(first, stream)
        return
    header, long_name = first, None
    while header:
        if len(header) < BLOCK:
            raise TarFormatError("it ends inside a header")
        if not any(header):
            return  # the end-of-archive block
        name, size, kind = _parse(header)
        data = _read(stream, size + -size % BLOCK)
        if len(data) < size + -size % BLOCK:
            raise TarFormatError(f"it ends inside {name!r}")
        data = data[:size]
        if kind == b"L":  # GNU: the next member's long name
            long_name = data.rstrip(b"\0").decode("utf-8", "replace")
        elif kind == b"x":  # pax: extended attributes of the next member
            long_name = _pax_path(data) or long_name
        elif kind in (b"0", b"\0", b"7"):
            yield long_name or name, data
            long_name = None
        else:  # directories, links, global pax headers: nothing to read
            long_name = None
        header = _read(stream, BLOCK)


def _parse(header: bytes) -> tuple[str, int, bytes]:
    stored = _number(header[148:156])
    if stored != sum(header) - sum(header[148:156]) + 8 * ord(" "):
        raise TarFormatError("a header's checksum does not match")
    name = header[:100].split(b"\0", 1)[0]
    if header[257:263] == b"ustar\0" and header[345]:  # POSIX only: GNU keeps other fields there
        name = header[345:500].split(b"\0", 1)[0] + b"/" + name
    return name.decode("utf-8", "replace"), _number(header[124:136]), header[156:157]


def _number(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    try:
        return int(field.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        raise TarFormatError("a header holds no valid number") from None


def _pax_path(data: bytes) -> str | None:
    path = None
    while data:  # records of "LENGTH key=value\n"
        length = int(data.split(b" ", 1)[0])
        key, _, value = data[:length].partition(b" ")[2].partition(b"=")
        if key == b"path":
            path = value.rstrip(b"\n").decode("utf-8", "replace")
        data = data[length:]
    return path


def _read(stream: BinaryIO, count: int) -> bytes:
    """Up to `count` bytes; fewer only at the end of the stream (reads may return less)."""
    chunks, left = [], count
    while left:
        chunk = stream.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class _Prefixed:
    """A stream with bytes already read put back in front, for tarfile."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self.head, self.rest = head, rest

    def read(self, count: int = -1) -> bytes:
        if not self.head:
            return self.rest.read(count)
        if count < 0:
            out, self.head = self.head + self.rest.read(), b""
            return out
        out, self.head = self.head[:count], self.head[count:]
        return out


def _compressed(first: bytes, stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    try:
        with tarfile.open(fileobj=_Prefixed(first, stream), mode="r|*") as tar:  # type: ignore[arg-type]
            for member in tar:
                if member.isreg():
                    yield member.name, tar.extractfile(member).read()  # type: ignore[union-attr]
    except (tarfile.TarError, EOFError) as exc:
        raise TarFormatError(f"{type(exc).__name__}: {exc}") from None
