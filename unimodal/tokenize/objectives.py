"""How a sample is laid out for the encoder: its objective's `lay_out` (unimodal/objectives/), plus OS-MD.

Each objective's module says how it lays a sample out (views, masks). Here
are the parts around them: the seed of a sample's masks, the hallucination
tokens and privileged view of a dataset with privileged inputs, and each
objective's step over a batch once its samples are known (itm's negatives).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import torch

from unimodal.modalities.text import TEXT
from unimodal.objectives import objective, objectives
from unimodal.tokenize.sequence import Segment, TokenSequence


def mask_seed(seed: int, dataset: int, key: str, epoch: int) -> int:
    """The seed of one sample's masks in one epoch: the same on every rank and worker (~1 us).

    Drawn from (recipe seed, dataset, sample key, epoch): see unimodal/objectives/masking.py.
    """
    digest = hashlib.blake2b(f"{seed}/{dataset}/{epoch}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def lay_out(name: str, prompt: Segment, inputs: list[Segment], mask_ratio: float | None, seed: int) -> list[Segment]:
    """The encoder segments of one sample (inputs in recipe order), views and masks set; `seed` seeds the masks."""
    return objective(name).lay_out(prompt, inputs, mask_ratio, seed)


def with_privileged(segments: list[Segment], privileged: list[Segment], slots: torch.Tensor) -> list[Segment]:
    """OS-MD: a seq2seq sample's `segments` (view 0), then hallucination tokens, then its privileged inputs as view 1.

    The hallucination tokens are `slots` (ids) masked: the model shows its mask
    embedding there, told apart by position, and the encoder's states at them
    are the hallucinated privileged features the decoder reads with the
    ordinary ones (unimodal/model/distill.py). The privileged inputs, present
    in training only, are encoded apart as a second view, so their features
    are the privileged modality's alone: the distillation target.
    """
    hallucinated = Segment(TEXT, slots, masked=torch.ones(len(slots), dtype=torch.bool))
    return [*segments, hallucinated, *(replace(s, view=1) for s in privileged)]


def complete_rows(rows: list[list[TokenSequence]]) -> list[list[TokenSequence]]:
    """A batch's rows after each objective's step over them (itm: its mismatched views filled in)."""
    for o in objectives():
        if o.complete_rows is not None:
            rows = o.complete_rows(rows)
    return rows
