"""The modality registry: one `Modality` record per modality, everything the framework knows about it.

A modality owns the shard extensions it decodes, its safe decoder, its
tokenizer settings (the recipe's `tokenizer.<name>`), and, unless it is text
(SentencePiece ids), its patcher and the dtype its patches travel in. Every part
of the flow that enumerates modalities reads them here: the recipe schema
(unimodal/config.py), field checks (unimodal/fields.py), decoding
(unimodal/data/decode.py), the tokenizer and the batch layout
(unimodal/tokenize/), the model's stems (unimodal/model/).

Registration order fixes each modality's code in a batch (`modality_codes`:
0 is padding) and the order the model creates its stems in, so the built-ins
register first, always in the same order (unimodal/modalities/__init__.py);
a modality of a user's own registers when its module is imported, which a
recipe's `plugins` does in every process of a run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch

# Pickle-bearing extensions: unpickling a shard member runs its code, so no modality may claim them,
# and `unimodal shards write` never writes them.
PICKLED: tuple[str, ...] = ("pyd", "pkl", "pickle", "pth")
PAD = "pad"  # code 0 in a batch: padding, no modality
NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class BadSample(Exception):
    """A sample that cannot be used; `reason` is short enough to count by. Decoders raise it (or anything)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Settings(BaseModel):
    """Base of a modality's tokenizer settings: a closed section, as every recipe section is."""

    model_config = ConfigDict(extra="forbid")


class Patcher(Protocol):
    """Turns one decoded input into patch rows [n_tokens, dim] (DataLoader workers run it)."""

    dim: int

    def __call__(self, raw: Any) -> torch.Tensor: ...


# (member bytes, json path of a `json.a.b` field (else []), the modality's settings or None) -> raw input
Decoder = Callable[[bytes, list[str], Any], Any]


@dataclass(frozen=True)
class Modality:
    """One modality, as `register_modality` takes it."""

    name: str  # its key in a recipe's `inputs` and `tokenizer`, and its patches' `patches_<name>` in a batch
    extensions: tuple[str, ...]  # the shard member extensions it decodes, lowercase; each claimed once
    decode: Decoder  # never unpickles: a shard is untrusted input
    # the type of `tokenizer.<name>` in a recipe: a `Settings` model whose fields all have defaults (the section
    # may be left out), or another type, then required (text: the SentencePiece model's path); None: no section
    settings: type | None = None
    # settings (or None) -> Patcher; None for text alone, tokenized as SentencePiece ids
    patcher: Callable[[Any], Patcher] | None = None
    patch_dtype: torch.dtype | None = None  # its patches in a batch (uint8 pixels are scaled in the model)


_REGISTRY: dict[str, Modality] = {}
_CODES: dict[str, int] = {PAD: 0}


def register_modality(modality: Modality) -> Modality:
    """Add a modality (after every one registered before it); refused if its name or an extension is taken."""
    m = modality
    if not NAME.match(m.name) or m.name == PAD:
        raise ValueError(f"modality name {m.name!r}: lowercase letters, digits and _, not {PAD!r}")
    if m.name in _REGISTRY:
        raise ValueError(f"modality {m.name!r} is registered already")
    if not m.extensions or any(e != e.lower() or "." in e for e in m.extensions):
        raise ValueError(f"modality {m.name!r}: extensions must be lowercase without dots, got {m.extensions}")
    pickled = [e for e in m.extensions if e in PICKLED]
    if pickled:
        raise ValueError(f"modality {m.name!r}: {', '.join(pickled)} hold pickles, which are never decoded")
    for other in _REGISTRY.values():
        taken = sorted(set(m.extensions) & set(other.extensions))
        if taken:
            raise ValueError(f"modality {m.name!r}: {', '.join(taken)} decoded by {other.name!r} already")
    if (m.patcher is None) != (m.patch_dtype is None):
        raise ValueError(f"modality {m.name!r}: a patcher and its patch_dtype go together")
    if m.patcher is None and any(other.patcher is None for other in _REGISTRY.values()):
        raise ValueError(f"modality {m.name!r} needs a patcher: only text is tokenized as SentencePiece ids")
    _REGISTRY[m.name] = m
    _CODES[m.name] = len(_CODES)
    return m


def modalities() -> tuple[Modality, ...]:
    """Every registered modality, in registration order."""
    return tuple(_REGISTRY.values())


def modality(name: str) -> Modality:
    """The registered modality `name`; ValueError naming the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown modality {name!r} (known: {', '.join(_REGISTRY)})")
    return _REGISTRY[name]


def modality_codes() -> Mapping[str, int]:
    """Each modality's code in a batch's `modality` tensor: 0 for padding, then in registration order."""
    return MappingProxyType(_CODES)


def patch_modalities() -> tuple[str, ...]:
    """The modalities tokenized as patches (all but text), in registration order: one model stem each."""
    return tuple(m.name for m in _REGISTRY.values() if m.patcher is not None)
