"""Text: UTF-8 `.txt` members, a string inside a `.json` member (`json.caption`), or an integer class id in a
`.cls` member (ImageNet-style webdataset shards), written as a name when the dataset lists its `classes`.

Text is tokenized by SentencePiece (unimodal/tokenize/text.py), not patched; its
settings are the SentencePiece model's path, the recipe's `tokenizer.text`.
Task prompts, seq2seq targets and the mlm objective are text: code that must
single it out names it by `TEXT`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unimodal.modalities.registry import BadSample, Modality

TEXT = "text"
CLS = "cls"  # an integer class id as text: "7"


def decode(data: bytes, path: list[str], settings: Path | None) -> str:
    """The stripped text of a txt member, or the value at `path` in a json one."""
    if not path:
        return data.decode("utf-8").strip()
    value: Any = json.loads(data)
    for part in path:
        if not isinstance(value, dict) or part not in value:
            raise BadSample("missing json field", ".".join(path))
        value = value[part]
    if isinstance(value, (dict, list)) or value is None:
        raise BadSample("json field is not text", ".".join(path))
    return str(value)


MODALITY = Modality(TEXT, ("txt", "json", CLS), decode, settings=Path)  # no patcher: SentencePiece ids
