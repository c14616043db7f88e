"""Which shard fields decode to which modality.

Fields are named by their extension, as in every WebDataset tool; a recipe
picks them per dataset (`inputs: {image: jpg}`, `target: json.caption`).
Pickle-bearing extensions are deliberately absent: they are never decoded.
"""

from __future__ import annotations

DECODABLE: dict[str, tuple[str, ...]] = {
    "text": ("txt", "json"),
    "image": ("jpg", "jpeg", "png", "webp"),
    "audio": ("wav", "flac", "ogg", "mp3"),
    "video": ("mp4", "webm", "mkv", "avi"),
}


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
    name, path = split_field(field)
    ext = extension(field)
    if ext not in DECODABLE[modality]:
        raise ValueError(
            f"field {field!r} has no {modality} decoder "
            f"({modality} reads: {', '.join(DECODABLE[modality])})"
        )
    if ext == "json" and not path:
        raise ValueError(f"field {field!r}: a json field needs a path, e.g. json.caption")
