"""`index.json` beside the shards: what each shard holds, so epochs can be counted.

    {"shards": [{"name": "image-000000.tar", "samples": 640, "bytes": 81920}, ...],
     "samples": 1280, "bytes": 163840}

Shard writers (`unimodal shards write`, the demo) merge their shards into the
index of the folder they write to. Readers look a shard up by its file name in
the index of its own folder; remote shards (`pipe:`, http) have no index here,
so their datasets report no epochs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

INDEX = "index.json"


def read_index(directory: str | Path) -> dict[str, dict[str, Any]]:
    """{shard name: entry} from `directory/index.json`; empty when there is none."""
    path = Path(directory) / INDEX
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return {entry["name"]: entry for entry in data["shards"]}
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a shard index ({err!r})") from None


def write_index(directory: str | Path, entries: list[dict[str, Any]]) -> Path:
    """Merge `entries` ({name, samples, bytes}) into `directory/index.json`, atomically.

    Entries for shards no longer in `directory` are dropped.
    """
    directory = Path(directory)
    shards = {name: e for name, e in read_index(directory).items() if (directory / name).is_file()}
    shards.update(
        {e["name"]: {"name": e["name"], "samples": int(e["samples"]), "bytes": int(e["bytes"])} for e in entries}
    )
    ordered = [shards[name] for name in sorted(shards)]
    data = {
        "shards": ordered,
        "samples": sum(e["samples"] for e in ordered),
        "bytes": sum(e["bytes"] for e in ordered),
    }
    path = directory / INDEX
    tmp = path.with_name(f".{INDEX}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def shard_samples(urls: list[str]) -> list[int] | None:
    """Samples in each shard, from the indexes beside them; None if any shard is not indexed."""
    indexes: dict[Path, dict[str, dict[str, Any]]] = {}
    counts = []
    for url in urls:
        path = Path(url)
        if ":" in url.split("/", 1)[0] or not path.is_file():
            return None
        if path.parent not in indexes:
            indexes[path.parent] = read_index(path.parent)
        entry = indexes[path.parent].get(path.name)
        if entry is None:
            return None
        counts.append(int(entry["samples"]))
    return counts
