"""The modalities the model reads: one module each (text, image, audio, video), one registry (registry.py).

The built-ins register here, in this order, which fixes their codes in every
batch (pad 0, text 1, image 2, audio 3, video 4) and the order the model creates
its stems in: checkpoints depend on both. A modality of a user's own is one
module that calls `register_modality(Modality(...))` when imported, named in a
recipe's `plugins` (docs/DESIGN.md, "Adding a modality").
"""

from __future__ import annotations

from unimodal.modalities import audio, image, text, video
from unimodal.modalities.registry import (
    PICKLED,
    BadSample,
    Modality,
    Patcher,
    Settings,
    modalities,
    modality,
    modality_codes,
    patch_modalities,
    register_modality,
)

for _builtin in (text.MODALITY, image.MODALITY, audio.MODALITY, video.MODALITY):  # the code order
    register_modality(_builtin)

__all__ = [
    "PICKLED",
    "BadSample",
    "Modality",
    "Patcher",
    "Settings",
    "modalities",
    "modality",
    "modality_codes",
    "patch_modalities",
    "register_modality",
]
