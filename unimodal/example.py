"""A decoded sample: the contract between decoding (unimodal.data) and tokenizing (unimodal.tokenize)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Example:
    """A decoded sample: its dataset, raw inputs per modality, and text target (seq2seq only).

    `key` and `epoch` (0 outside training) seed the sample's masks for mlm and mim.
    """

    dataset: int
    key: str
    inputs: dict[str, Any]  # per modality, what its decoder returns (unimodal/modalities/)
    target: str | None
    epoch: int = 0
