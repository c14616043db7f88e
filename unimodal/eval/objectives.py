"""Held-out metrics of the encoder-only objectives, each over one dataset's eval batches.

    mlm          masked_token_accuracy  argmax of the tied LM head at masked text tokens
    contrastive  recall_at_1            retrieval over the whole eval set, mean of both directions
    itm          match_accuracy         matched and mismatched views told apart (logit > 0 means matched)

mim has none here: a reconstruction error has no scale to read it on; its
`loss/<dataset>` is logged in training. Each takes (batch, reference texts)
pairs, as exact match does, and returns (metric, samples).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from unimodal.model import UnifiedModel
from unimodal.model.unified import TEXT, pool_views

Batches = Iterable[tuple[dict[str, torch.Tensor], tuple]]


def masked_token_accuracy(model: UnifiedModel, batches: Batches) -> tuple[float, int]:
    correct = masked = samples = 0
    for batch, _ in batches:
        memory, _ = model.encode(batch)
        at = batch["enc_masked"] & (batch["modality"] == TEXT)
        correct += int((model.lm_head(memory[at]).argmax(-1) == batch["enc_ids"][at]).sum())
        masked += int(at.sum())
        samples += len(batch["dataset"])
    return correct / max(masked, 1), samples


def recall_at_1(model: UnifiedModel, batches: Batches) -> tuple[float, int]:
    z = torch.cat([model.embed(batch) for batch, _ in batches])  # [N, 2, d]
    sim = z[:, 0] @ z[:, 1].T
    truth = torch.arange(len(z))
    first_to_second = (sim.argmax(1) == truth).float().mean()
    second_to_first = (sim.argmax(0) == truth).float().mean()
    return float(first_to_second + second_to_first) / 2, len(z)


def match_accuracy(model: UnifiedModel, batches: Batches) -> tuple[float, int]:
    correct = views = samples = 0
    for batch, _ in batches:
        memory, _ = model.encode(batch)
        pooled, sizes = pool_views(memory, batch)
        said = model.itm.logits(pooled.flatten(0, 1)) > 0
        matched = torch.tensor([True, False]).repeat(len(pooled))
        present = sizes.flatten() > 0  # a view dropped for want of a negative is not scored
        correct += int((said == matched)[present].sum())
        views += int(present.sum())
        samples += len(pooled)
    return correct / max(views, 1), samples
