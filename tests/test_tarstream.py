"""adt's one-pass tar reader against Python's tarfile, on the formats shard writers produce."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from engine.tarstream import TarFormatError, tar_files

LONG = "class_" + "x" * 120 + "/sample_0001.jpg"  # past ustar's 100-character name field


def make_tar(fmt: int, mode: str = "w") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode, format=fmt) as tar:
        folder = tarfile.TarInfo("a_folder")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in [("s0.cls", b"3"), ("s0.jpg", os.urandom(1500)), (LONG, b""), ("s1.cls", b"0" * 512)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def reference(raw: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r|*") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_same_files_as_tarfile(fmt):
    raw = make_tar(fmt)  # the long name: a ustar prefix, a GNU long-name member, a pax header
    files = list(tar_files(io.BytesIO(raw)))
    assert files == reference(raw)
    assert [name for name, _ in files] == ["s0.cls", "s0.jpg", LONG, "s1.cls"]


def test_compressed_shards_are_read_too():
    raw = make_tar(tarfile.PAX_FORMAT, "w:gz")
    assert list(tar_files(io.BytesIO(raw))) == reference(raw)


def test_a_stream_that_returns_short_reads():
    class Trickle(io.RawIOBase):  # a network stream hands over a few bytes at a time
        def __init__(self, data: bytes) -> None:
            self.data = data

        def readable(self) -> bool:
            return True

        def read(self, count: int = -1) -> bytes:
            chunk, self.data = self.data[:min(count, 97)], self.data[min(count, 97):]
            return chunk

    raw = make_tar(tarfile.GNU_FORMAT)
    assert list(tar_files(Trickle(raw))) == reference(raw)


@pytest.mark.parametrize("cut, why", [(700, "ends inside a header"), (1100, "ends inside 's0.cls'"),
                                      (3 * 512 + 512 + 1000, "ends inside 's0.jpg'")])
def test_a_truncated_tar_says_where_it_ends(cut, why):
    raw = make_tar(tarfile.GNU_FORMAT)  # headers: folder, s0.cls, its data block, s0.jpg, its data
    with pytest.raises(TarFormatError, match=why):
        list(tar_files(io.BytesIO(raw[:cut])))


def test_random_bytes_fail_the_header_checksum():
    with pytest.raises(TarFormatError, match="checksum"):
        list(tar_files(io.BytesIO(bytes(range(256)) * 8)))
