"""Shard fields: their names, and whether a modality decodes them.

Fields are named by their extension, as in every WebDataset tool; a recipe
picks them per dataset (`inputs: {image: jpg}`, `target: json.caption`). Which
modality decodes which extension is the modality registry's
(unimodal/modalities/): an extension no modality claims is refused, never
guessed. Pickle-bearing extensions (`PICKLED`) are claimed by none: unpickling
a shard runs its code.
"""

from __future__ import annotations

from unimodal.modalities import modalities, modality


def split_field(field: str) -> tuple[str, list[str]]:
    """`json.answer.value` -> ("json", ["answer", "value"]); `flac` -> ("flac", [])."""
    if field.startswith("json."):
        return "json", field[len("json.") :].split(".")
    return field, []


def extension(field: str) -> str:
    """The tar member extension a field reads; the last dotted part (`src.txt` -> txt)."""
    return split_field(field)[0].rsplit(".", 1)[-1].lower()


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
    """The modality whose decoder reads members with this extension; None if none does."""
    last = suffix(ext)
    return next((m.name for m in modalities() if last in m.extensions), None)
