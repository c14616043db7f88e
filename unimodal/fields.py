"""Which shard fields decode to which modality.

Fields are named by their extension, as in every WebDataset tool; a recipe
picks them per dataset (`inputs: {image: jpg}`, `target: json.caption`).
Pickle-bearing extensions (`PICKLED`) have no decoder: unpickling a shard runs
its code, so they are never decoded, and `unimodal shards write` never writes them.
"""

from __future__ import annotations

DECODABLE: dict[str, tuple[str, ...]] = {
    "text": ("txt", "json"),
    "image": ("jpg", "jpeg", "png", "webp"),
    "audio": ("wav", "flac", "ogg", "mp3"),
    "video": ("mp4", "webm", "mkv", "avi"),
}
PICKLED: tuple[str, ...] = ("pyd", "pkl", "pickle", "pth")


def split_field(field: str) -> tuple[str, list[str]]:
    """`json.answer.text` -> ("json", ["answer", "text"]); `flac` -> ("flac", [])."""
    if field.startswith("json."):
        return "json", field[len("json.") :].split(".")
    return field, []


def extension(field: str) -> str:
    """The tar member extension a field reads; the last dotted part (`src.txt` -> txt)."""
    return split_field(field)[0].rsplit(".", 1)[-1].lower()


def check_field(field: str, modality: str) -> None:
    """Raise ValueError if `field` cannot be decoded as `modality`."""
    path = split_field(field)[1]
    ext = extension(field)
    if ext not in DECODABLE[modality]:
        raise ValueError(
            f"field {field!r} has no {modality} decoder ({modality} reads: {', '.join(DECODABLE[modality])})"
        )
    if ext == "json" and not path:
        raise ValueError(f"field {field!r}: a json field needs a path, e.g. json.caption")


def suffix(ext: str) -> str:
    """The last dotted part of a member's extension, lowercased: `seg.PNG` -> png."""
    return ext.rsplit(".", 1)[-1].lower()


def modality_of(ext: str) -> str | None:
    """The modality whose decoder reads members with this extension; None if none does."""
    last = suffix(ext)
    return next((modality for modality, exts in DECODABLE.items() if last in exts), None)
