"""How each objective lays a sample out for the encoder (see `DatasetConfig.objective`).

    seq2seq      [prompt, inputs...]; the decoder writes the target. With privileged inputs (OS-MD):
                 view 0 [prompt, ordinary inputs..., hallucination tokens], view 1 [privileged inputs]
    mlm          [prompt, inputs...]; mask_ratio of the text input's tokens masked
    mim          [prompt, inputs...]; mask_ratio of each image, audio or video input's patches masked
    contrastive  view 0 [first input], view 1 [second input]: encoded apart
    itm          view 0 [first, second] (matched), view 1 [first, another sample's second]
                 (mismatched), filled in by `pair_negatives` once the batch is known

The pair objectives take no prompt: it would be the same few tokens in every
pooled view, and on the demo data that common part alone held contrastive
training at log(batch) (the views' embeddings collapsed onto it).

Masks are drawn here, in the DataLoader worker, from a generator seeded by
(recipe seed, dataset, sample key, epoch): a sample gets the same mask on any
rank or worker, a resumed run sees exactly the masks it would have seen, and a
new epoch masks afresh. A masked token keeps its id or patch in the batch; the
model swaps in one learned mask embedding and predicts the original. Every
masked token becomes the mask embedding (no BERT 80/10/10 split: Wettig et
al. 2022 found it no better than always masking, and one rule serves text and
patches alike).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import torch

from unimodal.modalities.text import TEXT
from unimodal.tokenize.sequence import Segment, TokenSequence


def mask_seed(seed: int, dataset: int, key: str, epoch: int) -> int:
    """The seed of one sample's masks in one epoch: the same on every rank and worker (~1 us)."""
    digest = hashlib.blake2b(f"{seed}/{dataset}/{epoch}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def random_mask(n: int, ratio: float, gen: torch.Generator) -> torch.Tensor:
    """bool [n]: round(ratio * n) positions (at least one when n > 0) drawn uniformly without replacement."""
    mask = torch.zeros(n, dtype=torch.bool)
    if n:
        mask[torch.randperm(n, generator=gen)[: max(1, round(ratio * n))]] = True
    return mask


def lay_out(
    objective: str, prompt: Segment, inputs: list[Segment], mask_ratio: float | None, seed: int
) -> list[Segment]:
    """The encoder segments of one sample (inputs in recipe order), views and masks set; `seed` seeds the masks."""
    if objective == "contrastive":
        first, second = inputs
        return [first, replace(second, view=1)]
    if objective == "itm":  # view 1's second input is a stand-in of the same length until pair_negatives
        return inputs + [replace(s, view=1) for s in inputs]
    if objective in ("mlm", "mim"):  # mlm masks the text input, mim the others
        gen = torch.Generator().manual_seed(seed)
        maskable = [(s.modality == TEXT) == (objective == "mlm") for s in inputs]
        inputs = [replace(s, masked=random_mask(len(s), mask_ratio, gen)) if m else s for s, m in zip(inputs, maskable)]
    return [prompt, *inputs]


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


def pair_negatives(rows: list[list[TokenSequence]]) -> list[list[TokenSequence]]:
    """Rows with each itm sample's mismatched view filled in, deterministically from the batch.

    Its second input comes from the next itm sample of the same dataset in the
    batch (cyclically) whose second input differs, cut to the stand-in's length
    so the batch stays within the token budget it was packed to. With no such
    sample the mismatched view is dropped and the sample counts its matched view only.
    """
    itm = [s for row in rows for s in row if s.objective == "itm"]
    filled: dict[int, TokenSequence] = {}
    for i, seq in enumerate(itm):
        stand_in = seq.segments[-1]
        others = (o.segments[-1].data for o in itm[i + 1 :] + itm[:i] if o.dataset == seq.dataset)
        data = next((d for d in others if not torch.equal(d, stand_in.data)), None)
        if data is None:
            segments = [s for s in seq.segments if s.view == 0]
        else:
            segments = seq.segments[:-1] + [replace(stand_in, data=data[: len(stand_in)])]
        filled[id(seq)] = replace(seq, segments=segments)
    return [[filled.get(id(s), s) for s in row] for row in rows]
