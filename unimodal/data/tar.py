"""A streaming tar reader for shards: the regular members' names and bytes, in order.

Python's tarfile, which webdataset uses, spends ~60 us parsing each member's
header (twice that when a pax header carries a fractional mtime, as
webdataset's ShardWriter writes by default): for an image shard, 2 members a
sample, that is a tenth of a loader worker's time per sample. Shards need
only names and bytes, so this reads the 512-byte headers itself (~5 us a
member, bench/loader.py), with the parts of the format that shard writers use:

- ustar and GNU headers, the ustar name prefix, octal and base-256 sizes;
- pax extended headers (`path`, `size`) and GNU long names, for the next member;
- header checksums: a damaged header is an error, never a misread member;
- gzip, bzip2 and xz compressed tars (told by their magic bytes).

It never writes to disk: names are only keys. The archive must end with its
end-of-archive block: a shard cut short anywhere (in a header, in a member or
between members) raises TarError after its last complete member.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Iterator
from typing import BinaryIO

BLOCK = 512
CHUNK = 1 << 24  # larger members are read in pieces: a hostile size cannot make one huge allocation
REGULAR = (b"0", b"\0", b"7")  # file, old-style file, contiguous file
NO_DATA = (
    b"1",
    b"2",
    b"3",
    b"4",
    b"5",
    b"6",
)  # links, devices, directory, fifo: any size field is not followed by data
COMPRESSED = (
    (b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f)),
    (b"BZh", bz2.BZ2File),
    (b"\xfd7zXZ\x00", lzma.LZMAFile),
)


class TarError(Exception):
    """The tar stream is truncated or damaged."""


class _Prepended:
    """`head` then the rest of `stream`: magic bytes were read to tell the compression."""

    def __init__(self, head: bytes, stream: BinaryIO):
        self.head, self.stream = head, stream

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.stream.read(size)
        if size < 0:
            out, self.head = self.head + self.stream.read(), b""
            return out
        out, self.head = self.head[:size], self.head[size:]
        return out + (self.stream.read(size - len(out)) if len(out) < size else b"")


def _read_exactly(stream: BinaryIO, size: int, what: str) -> bytes:
    if size <= CHUNK:
        data = stream.read(size)
    else:
        parts, left = [], size
        while left and (part := stream.read(min(left, CHUNK))):
            parts.append(part)
            left -= len(part)
        data = b"".join(parts)
    if len(data) != size:
        raise TarError(f"truncated: {what} ends after {len(data)} of {size} bytes")
    return data


def _number(field: bytes) -> int:
    """An octal header number, or GNU's base-256 (first byte 0x80) for large values."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    return int(digits, 8) if digits else 0


def _signed_sum(header: bytes) -> int:
    """The checksum as some old tars computed it, with bytes as signed chars."""
    return sum(b - 256 if b > 127 else b for b in header[:148] + header[156:]) + 256


def _pax_records(data: bytes) -> dict[str, str]:
    """`LENGTH KEY=VALUE\\n` records."""
    records, pos = {}, 0
    while pos < len(data) and data[pos] != 0:
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        if length <= 0:
            raise ValueError(f"pax record length {length}")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def decompressed(stream: BinaryIO) -> BinaryIO:
    """`stream`, decompressed if it starts with a gzip, bzip2 or xz magic."""
    head = stream.read(6)
    raw = _Prepended(head, stream)
    for magic, opener in COMPRESSED:
        if head.startswith(magic):
            return opener(raw)
    return raw


def tar_members(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each regular member of the tar in `stream`; raises TarError when it breaks."""
    stream = decompressed(stream)
    long_name = size_override = None
    while True:
        header = stream.read(BLOCK)
        if header == bytes(BLOCK):
            return  # end-of-archive (tarfile, too, stops at the first zero block)
        if len(header) < BLOCK:
            raise TarError("truncated: the tar has no end-of-archive block")
        try:
            checksum = _number(header[148:156])
            size = _number(header[124:136])
        except ValueError:
            raise TarError("damaged header: a number field is not octal") from None
        if checksum != sum(header[:148]) + 256 + sum(header[156:]) and checksum != _signed_sum(header):
            raise TarError("damaged header: bad checksum")
        kind = header[156:157]
        if size_override is not None:
            size, size_override = size_override, None
        if size < 0:
            raise TarError(f"damaged header: size {size}")
        if kind in NO_DATA:  # as tarfile reads them
            size = 0
        data = _read_exactly(stream, size, "a member")
        _read_exactly(stream, -size % BLOCK, "a member's padding")
        if kind == b"x":  # pax header of the next member
            try:
                pax = _pax_records(data)
                size_override = int(pax["size"]) if "size" in pax else None
            except ValueError as err:
                raise TarError(f"damaged pax header: {err}") from None
            long_name = pax.get("path", long_name)
        elif kind == b"L":  # GNU long name of the next member
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif kind in (b"g", b"K"):  # pax global header, GNU long link name: nothing a shard needs
            continue
        else:
            name = long_name
            if name is None:
                name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                prefix = (
                    header[345:500].split(b"\0", 1)[0] if header[257:263] == b"ustar\0" else b""
                )  # GNU headers have none
                if prefix:
                    name = prefix.decode("utf-8", "surrogateescape") + "/" + name
            long_name = None
            if kind in REGULAR:
                yield name, data
