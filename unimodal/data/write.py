"""`unimodal shards write`: pack a manifest or a folder of files into WebDataset shards.

    unimodal shards write --manifest samples.jsonl --out data/mine
    unimodal shards write --folder photos/ --out data/photos --max-size 500M --workers 4

Two inputs:

    manifest  JSONL, one sample a line, keyed by field name (an extension):
              {"__key__": "cat-1", "jpg": "cats/1.jpg", "txt": "a cat", "json": {"label": 3}}
              txt and cls values are the text itself, json values any JSON value
              (written as JSON), every other value a file path relative to the
              manifest's folder. A line without "__key__" is keyed by its number.
    folder    every file under the folder; files sharing a path up to the first dot
              of their name are one sample (cats/001.jpg + cats/001.txt -> key
              cats_001, fields jpg and txt), the way webdataset groups tar members.

Why not webdataset's ShardWriter in a loop:

- every input is checked before the first shard is written, so a bad line near
  the end costs seconds and leaves nothing behind; shards are written under
  temporary names and renamed into place only once all of them are written;
- the split into shards is planned here, from file sizes, so the shards are
  byte-identical whatever `--workers` is, and reproducible (mtime 0, owner 0,
  mode 0444);
- keys are sanitised to [A-Za-z0-9_-]: webdataset cuts a member's name at its
  first dot, and a slash would make it a path;
- what no reader here would decode (pickle) is refused, and so is any file
  outside the manifest's folder tree, so a manifest from elsewhere cannot pack
  ~/.ssh into a shard.

The shards are merged into `index.json` beside them (`unimodal.data.index`).
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unimodal.data.index import write_index
from unimodal.fields import suffix
from unimodal.modalities import PICKLED

INLINE_TEXT = ("txt", "cls")  # manifest values of these are the text itself
FIELD_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*")
PREFIX = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
UNSAFE_KEY = re.compile(r"[^A-Za-z0-9_-]")
SIZE = re.compile(r"(\d+(?:\.\d+)?)([kmgt]?)(?:i?b)?", re.IGNORECASE)
POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
FORMAT = tarfile.PAX_FORMAT  # ustar headers; a pax header only for a name over 100 bytes


class ShardWriteError(ValueError):
    """Input that cannot become shards; the message names the file, the line and the field."""


@dataclass(frozen=True)
class Sample:
    """One sample to write: its key and, per field, the bytes or the file that holds them."""

    key: str
    fields: dict[str, bytes | Path]  # bytes inline, or a file read when its shard is written
    origin: str  # for messages: "samples.jsonl line 3", "photos/cats/001.*"


@dataclass
class Shard:
    """A planned shard: its file name and its samples, in order."""

    name: str
    samples: list[Sample] = field(default_factory=list)


def size_in_bytes(text: str) -> int:
    """`4096`, `500M`, `1.5G` (K, M, G, T are powers of 1024) as bytes."""
    match = SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"not a size: {text!r} (e.g. 4096, 500M, 1G)")
    number, unit = match.groups()
    return int(float(number) * 1024 ** POWERS[unit.lower()])


def safe_key(key: str) -> str:
    return UNSAFE_KEY.sub("_", key)


def check_field_name(name: str, where: str) -> None:
    if not FIELD_NAME.fullmatch(name):
        raise ShardWriteError(
            f"{where}: not a field name: lowercase letters, digits, _ and -, "
            "ending in an extension, e.g. jpg, txt, seg.png"
        )
    if suffix(name) in PICKLED:
        raise ShardWriteError(f"{where}: pickle fields are refused: unpickling runs code, so nothing here reads them")


def source_file(value: str, folder: Path, where: str) -> Path:
    """The file `value` names (relative to `folder`), refused unless it lies inside `folder`."""
    path = (folder / value).resolve()
    shown = value if path == folder / value else f"{value} (-> {path})"
    if not path.is_relative_to(folder):
        raise ShardWriteError(f"{where}: {shown} is outside {folder}")
    if not path.exists():
        raise ShardWriteError(f"{where}: no such file {shown}")
    if not path.is_file():
        raise ShardWriteError(f"{where}: {shown} is not a file")
    return path


def manifest_value(name: str, value: Any, folder: Path, where: str) -> bytes | Path:
    """A manifest field's bytes (txt, cls, json) or the file it names (everything else)."""
    check_field_name(name, where)
    kind = suffix(name)
    if kind == "json":
        return json.dumps(value).encode("utf-8")  # as webdataset's own writer encodes json
    if kind in INLINE_TEXT:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ShardWriteError(f"{where}: expected text, got {json.dumps(value)[:60]}")
        return str(value).encode("utf-8")
    if not isinstance(value, str):
        raise ShardWriteError(f"{where}: expected a file path, got {json.dumps(value)[:60]}")
    return source_file(value, folder, where)


def manifest_samples(manifest: Path) -> list[Sample]:
    """Every sample of a JSONL manifest, every field checked; no file is read yet."""
    folder = manifest.resolve().parent
    try:
        lines = manifest.read_bytes().splitlines()
    except OSError as err:
        raise ShardWriteError(f"{manifest}: cannot read ({err.strerror})") from None
    samples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{manifest} line {number}"
        try:
            record = json.loads(line)
        except ValueError as err:
            raise ShardWriteError(f"{where}: not JSON: {err}") from None
        if not isinstance(record, dict):
            raise ShardWriteError(f"{where}: not a JSON object")
        key = record.pop("__key__", f"{number:06d}")
        if not isinstance(key, str) or not key:
            raise ShardWriteError(f"{where}: __key__ must be a non-empty string")
        if not record:
            raise ShardWriteError(f"{where}: no fields")
        fields = {name: manifest_value(name, v, folder, f"{where}: field {name!r}") for name, v in record.items()}
        samples.append(Sample(safe_key(key), fields, where))
    return samples


def visible_files(root: Path) -> Iterator[Path]:
    """Files under `root`, leaving out hidden ones (.DS_Store, .git/); folder links are not followed."""
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        yield from (Path(top) / f for f in files if not f.startswith("."))


def folder_samples(folder: Path) -> list[Sample]:
    """One sample per path stem under `folder` (cats/001.jpg + cats/001.txt), every file checked."""
    root = folder.resolve()
    if not root.is_dir():
        raise ShardWriteError(f"{folder}: not a folder")
    groups: dict[str, dict[str, Path]] = {}
    for path in sorted(visible_files(root)):
        rel = path.relative_to(root).as_posix()
        where = f"{folder / rel}"
        parent, _, name = rel.rpartition("/")
        stem, dot, ext = name.partition(".")
        if not dot:
            raise ShardWriteError(f"{where}: no extension (a file's extension names its field)")
        ext = ext.lower()
        check_field_name(ext, f"{where}: field {ext!r}")
        fields = groups.setdefault(f"{parent}/{stem}" if parent else stem, {})
        if ext in fields:
            raise ShardWriteError(f"{where}: field {ext!r} is also {fields[ext]}")
        fields[ext] = source_file(rel, root, f"{where}: field {ext!r}")
    return [Sample(safe_key(stem), fields, f"{folder / stem}.*") for stem, fields in sorted(groups.items())]


def check_unique(samples: list[Sample]) -> None:
    seen: dict[str, str] = {}
    for sample in samples:
        if sample.key in seen:
            raise ShardWriteError(
                f"duplicate key {sample.key!r}: {seen[sample.key]} and {sample.origin} "
                "(keys are sanitised: every character outside A-Z a-z 0-9 _ - becomes _)"
            )
        seen[sample.key] = sample.origin


def tarinfo(name: str, size: int) -> tarfile.TarInfo:
    """A member header with nothing of the machine in it: no time, owner or umask."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o444
    return info


def sample_bytes(sample: Sample) -> int:
    """Bytes the sample's members take in a tar: headers, then data padded to whole blocks."""
    total = 0
    for name, value in sample.fields.items():
        size = len(value) if isinstance(value, bytes) else value.stat().st_size
        total += len(tarinfo(f"{sample.key}.{name}", size).tobuf(FORMAT))
        total += -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return total


def tar_bytes(members: int) -> int:
    """A tar's size from its members' bytes: two end-of-archive blocks, padded to a whole record."""
    return -(-(members + 2 * tarfile.BLOCKSIZE) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def plan_shards(samples: list[Sample], prefix: str, max_count: int, max_size: int) -> list[Shard]:
    """Samples in order, a new shard whenever the next would pass a bound (a too-big one gets its own)."""
    shards: list[Shard] = []
    used = 0
    for sample in samples:
        size = sample_bytes(sample)
        if not shards or len(shards[-1].samples) == max_count or tar_bytes(used + size) > max_size:
            shards.append(Shard(f"{prefix}-{len(shards):06d}.tar"))
            used = 0
        shards[-1].samples.append(sample)
        used += size
    return shards


def field_bytes(sample: Sample, name: str) -> bytes:
    value = sample.fields[name]
    if isinstance(value, bytes):
        return value
    try:
        return value.read_bytes()
    except OSError as err:
        raise ShardWriteError(f"{sample.origin}: field {name!r}: cannot read {value} ({err.strerror})") from None


def write_shard(path: Path, samples: list[Sample]) -> None:
    """One tar at `path`; a sample's members sorted by field, as webdataset's TarWriter writes them."""
    with tarfile.open(path, "w", format=FORMAT) as tar:
        for sample in samples:
            for name in sorted(sample.fields):
                data = field_bytes(sample, name)
                tar.addfile(tarinfo(f"{sample.key}.{name}", len(data)), io.BytesIO(data))


def write_shards(
    samples: list[Sample],
    out: Path,
    prefix: str = "shard",
    max_count: int = 10_000,
    max_size: int = 1 << 30,
    workers: int = 1,
) -> list[dict[str, Any]]:
    """Write `samples` as `out/prefix-000000.tar`, ... and index them; returns the index entries."""
    if not samples:
        raise ShardWriteError("no samples to write")
    if not PREFIX.fullmatch(prefix):
        raise ShardWriteError(f"prefix {prefix!r}: use letters, digits, '.', '_' and '-', not starting with '.'")
    if min(max_count, max_size, workers) < 1:
        raise ShardWriteError("max count, max size and workers must each be at least 1")
    check_unique(samples)
    if any(out.glob(f"{prefix}-*.tar")):
        raise ShardWriteError(f"{out} already holds {prefix}-*.tar shards; remove them or choose another prefix")
    plan = plan_shards(samples, prefix, max_count, max_size)
    out.mkdir(parents=True, exist_ok=True)
    temps = [out / f".{shard.name}.{os.getpid()}.tmp" for shard in plan]
    try:
        if workers > 1 and len(plan) > 1:
            with ProcessPoolExecutor(min(workers, len(plan))) as pool:
                list(pool.map(write_shard, temps, [shard.samples for shard in plan]))
        else:
            for temp, shard in zip(temps, plan):
                write_shard(temp, shard.samples)
    except BaseException:
        for temp in temps:
            temp.unlink(missing_ok=True)
        raise
    entries = []
    for temp, shard in zip(temps, plan):
        entries.append({"name": shard.name, "samples": len(shard.samples), "bytes": temp.stat().st_size})
        os.replace(temp, out / shard.name)
    write_index(out, entries)
    return entries


def summary(entries: list[dict[str, Any]], out: Path, prefix: str, seconds: float) -> str:
    """One line: what was written, and the brace pattern a recipe's `shards:` takes."""
    samples, size = sum(e["samples"] for e in entries), sum(e["bytes"] for e in entries)
    pattern = f"{out}/{prefix}-{{000000..{len(entries) - 1:06d}}}.tar"
    return f"wrote {len(entries)} shards, {samples} samples, {size} bytes in {seconds:.1f} s: {pattern}"
