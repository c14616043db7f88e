"""The shard tar reader gives tarfile's regular members, names and bytes, and refuses broken tars."""

from __future__ import annotations

import io
import tarfile

import pytest
import webdataset as wds

from unimodal.data.tar import TarError, tar_members

LONG = "deep/" * 30 + "sample-000001.caption.txt"  # 175 characters: a pax path, a GNU long name, a ustar prefix
MEMBERS = [
    ("a-000.jpg", b"\xff\xd8" + bytes(700)),
    ("a-000.txt", "ünïcode caption".encode()),
    ("empty.json", b""),
    (LONG, b"x" * 513),
    ("dir/b-001.flac", bytes(range(256)) * 9),
]


def make_tar(fmt: int, mode: str = "w", mtime: float = 1_700_000_000) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=fmt) as tar:
        folder = tarfile.TarInfo("dir")
        folder.type = tarfile.DIRTYPE
        link = tarfile.TarInfo("link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "a-000.jpg"
        tar.addfile(folder)  # a directory and a symlink: not sample members
        tar.addfile(link)
        for name, data in MEMBERS:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), mtime
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tarfile_members(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_reads_the_regular_members_as_tarfile_does(fmt, mode):
    data = make_tar(fmt, mode)
    assert list(tar_members(io.BytesIO(data))) == MEMBERS == tarfile_members(data)


def test_reads_webdataset_shards_with_pax_mtimes_and_big_members():
    buf = io.BytesIO()
    big = bytes(range(256)) * (1 << 17)  # 32 MiB: read in pieces
    with wds.TarWriter(buf) as sink:  # fractional mtimes: a pax header for every member
        sink.write({"__key__": "s-000", "txt": "one", "bin": big})
        sink.write({"__key__": "s-001", "txt": "two", "json": {"a": 1}})
    data = buf.getvalue()
    assert list(tar_members(io.BytesIO(data))) == tarfile_members(data)
    assert dict(tar_members(io.BytesIO(data)))["s-000.bin"] == big


def test_a_tar_cut_anywhere_raises_after_its_complete_members():
    data = make_tar(tarfile.PAX_FORMAT)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        last = tar.getmembers()[-1]
        end = last.offset_data + -(-last.size // 512) * 512  # then zero blocks: the end-of-archive
    for cut in range(0, end + 1, 97):
        got = []
        with pytest.raises(TarError, match="truncated"):
            for member in tar_members(io.BytesIO(data[:cut])):
                got.append(member)
        assert got == MEMBERS[: len(got)]


def test_a_damaged_header_is_an_error_not_a_misread_member():
    data = bytearray(make_tar(tarfile.USTAR_FORMAT))
    data[1024 + 130] ^= 0x01  # the size field of the third header (a-000.jpg), one octal digit changed
    with pytest.raises(TarError, match="checksum"):
        list(tar_members(io.BytesIO(bytes(data))))
    data = bytearray(make_tar(tarfile.USTAR_FORMAT))
    data[1024 + 124 : 1024 + 136] = b"9" * 12  # not octal
    with pytest.raises(TarError, match="not octal"):
        list(tar_members(io.BytesIO(bytes(data))))


def test_a_negative_size_is_refused():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("a.txt")
        info.size, info.pax_headers = 3, {"size": "-5"}
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(TarError, match="size -5"):
        list(tar_members(io.BytesIO(buf.getvalue())))


def test_a_directory_or_link_header_with_a_size_has_no_data_after_it():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for kind in (tarfile.DIRTYPE, tarfile.LNKTYPE, tarfile.SYMTYPE):
            info = tarfile.TarInfo(f"odd-{kind.decode()}")
            info.type, info.size, info.linkname = kind, 512, "a.txt"  # some writers fill the size field anyway
            tar.addfile(info)
        info = tarfile.TarInfo("a.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    data = buf.getvalue()
    assert list(tar_members(io.BytesIO(data))) == tarfile_members(data) == [("a.txt", b"abc")]
