"""Masks of the masked-prediction objectives (mlm, mim, and any that masks inputs the same way).

Masks are drawn in the DataLoader worker, from a generator seeded by (recipe
seed, dataset, sample key, epoch) (unimodal/tokenize/objectives.py's
`mask_seed`): a sample gets the same mask on any rank or worker, a resumed run
sees exactly the masks it would have seen, and a new epoch masks afresh. A
masked token keeps its id or patch in the batch; the model swaps in one
learned mask embedding and predicts the original. Every masked token becomes
the mask embedding (no BERT 80/10/10 split: Wettig et al. 2022 found it no
better than always masking, and one rule serves text and patches alike).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch


def random_mask(n: int, ratio: float, gen: torch.Generator) -> torch.Tensor:
    """bool [n]: round(ratio * n) positions (at least one when n > 0) drawn uniformly without replacement."""
    mask = torch.zeros(n, dtype=torch.bool)
    if n:
        mask[torch.randperm(n, generator=gen)[: max(1, round(ratio * n))]] = True
    return mask


def mask_inputs(inputs: list[Any], maskable: Callable[[Any], bool], ratio: float, seed: int) -> list[Any]:
    """The input segments with `ratio` of each `maskable` one's tokens masked, drawn in order from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    return [replace(s, masked=random_mask(len(s), ratio, gen)) if maskable(s) else s for s in inputs]


def own_tokens(batch: dict[str, torch.Tensor], code: int) -> torch.Tensor:
    """bool [B, L]: the tokens of samples whose objective code is `code` (padding reads sample 0's, unmasked anyway)."""
    return (batch["objective"] == code)[batch["enc_sample"].clamp(min=0)]
