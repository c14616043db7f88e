"""Shard fields: their names, and whether a modality decodes them.

Fields are named by their extension, as in every WebDataset tool; a recipe
picks them per dataset (`inputs: {image: jpg}`, `target: json.caption`). Which
modality decodes which extension is the modality registry's
(unimodal/modalities/): an extension no modality claims is refused, never
guessed. Pickle-bearing extensions (`PICKLED`) are claimed by none: unpickling
a shard runs its code.

A member compressed on its own (`txt.gz`, `json.gz`, as webdataset writes and
reads them) is the member without the suffix: a recipe's `txt` reads `txt` or
`txt.gz` (and `txt.gz` names it explicitly), gunzipped before the decoder, up
to `GUNZIP_LIMIT` bytes: a member that would expand past it (a gzip bomb) is a
bad sample, skipped and counted, and never expanded further.
"""

from __future__ import annotations

import zlib
from typing import Any

from unimodal.modalities import BadSample, modalities, modality

GZIP = ".gz"
GUNZIP_LIMIT = 64 << 20  # bytes a gzipped member may expand to


def split_field(field: str) -> tuple[str, list[str]]:
    """`json.answer.value` -> ("json", ["answer", "value"]); `flac` -> ("flac", [])."""
    if field.startswith("json."):
        return "json", field[len("json.") :].split(".")
    return field, []


def unzipped(ext: str) -> str:
    """A member's extension without the suffix of its own compression: `txt.gz` -> txt."""
    return ext[: -len(GZIP)] if ext.lower().endswith(GZIP) else ext


def extension(field: str) -> str:
    """The tar member extension a field reads; the last dotted part (`src.txt` -> txt, `txt.gz` -> txt)."""
    return unzipped(split_field(field)[0]).rsplit(".", 1)[-1].lower()


def gunzip(data: bytes, limit: int = GUNZIP_LIMIT) -> bytes:
    """A gzipped member's bytes; BadSample past `limit` bytes (decompressed no further) or when corrupt."""
    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing
    try:
        out = inflate.decompress(data, limit)
    except zlib.error as err:
        raise BadSample("undecodable gz", str(err)) from None
    if inflate.unconsumed_tail:
        raise BadSample("gzip member too large", f"expands past {limit} bytes")
    if not inflate.eof:
        raise BadSample("undecodable gz", "truncated")
    return out


def member(raw: dict[str, Any], field: str) -> bytes:
    """The bytes `field` reads from a sample's members: its own member, or that member gzipped (`<name>.gz`)."""
    name, _ = split_field(field)
    if name in raw:
        return gunzip(raw[name]) if name.lower().endswith(GZIP) else raw[name]
    if name + GZIP in raw:
        return gunzip(raw[name + GZIP])
    raise BadSample("missing field", name)


def check_field(field: str, name: str) -> None:
    """Raise ValueError if `field` cannot be decoded as modality `name` (or `name` is no modality)."""
    reads = modality(name).extensions
    path = split_field(field)[1]
    ext = extension(field)
    if modality_of(ext) is None:
        known = ", ".join(e for m in modalities() for e in m.extensions)
        raise ValueError(f"field {field!r}: no modality decodes .{ext} (known extensions: {known})")
    if ext not in reads:
        raise ValueError(f"field {field!r} has no {name} decoder ({name} reads: {', '.join(reads)})")
    if ext == "json" and not path:
        raise ValueError(f"field {field!r}: a json field needs a path, e.g. json.caption")


def suffix(ext: str) -> str:
    """The last dotted part of a member's extension, lowercased: `seg.PNG` -> png."""
    return ext.rsplit(".", 1)[-1].lower()


def modality_of(ext: str) -> str | None:
    """The modality whose decoder reads members with this extension (gzipped or not); None if none does."""
    last = suffix(unzipped(ext))
    return next((m.name for m in modalities() if last in m.extensions), None)
