"""What the model says on one dataset's eval batches, per objective, in the form its metrics take.

    seq2seq      generated_texts     greedy decoding: (hypotheses, references)
    mlm          masked_tokens       argmax of the tied LM head at masked text tokens: (predicted, true ids)
    itm          match_predictions   matched and mismatched views (logit > 0 means matched): (said, truth)
    contrastive  pair_embeddings     unit vectors of each sample's two views [N, 2, d] (compared by cosine)

mim has no held-out metric (see unimodal/config.py). Each takes (batch,
reference texts) pairs; unimodal/eval/metrics.py scores what they return.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from unimodal.model import UnifiedModel
from unimodal.model.unified import TEXT, pool_inputs, pool_views
from unimodal.tokenize.text import BOS_ID, EOS_ID, TextTokenizer

Batches = Iterable[tuple[dict[str, torch.Tensor], tuple]]


def generated_texts(
    model: UnifiedModel, batches: Batches, text: TextTokenizer, max_new_tokens: int
) -> tuple[list[str], list[str]]:
    hypotheses, references = [], []
    for batch, refs in batches:
        ids = model.generate(batch, BOS_ID, EOS_ID, max_new_tokens)
        hypotheses += [text.decode(row) for row in ids.tolist()]
        references += refs
    return hypotheses, references


def masked_tokens(model: UnifiedModel, batches: Batches) -> tuple[torch.Tensor, torch.Tensor]:
    predicted, truth = [], []
    for batch, _ in batches:
        memory, _ = model.encode(batch)
        at = batch["enc_masked"] & (batch["modality"] == TEXT)
        predicted.append(model.lm_head(memory[at]).argmax(-1))
        truth.append(batch["enc_ids"][at])
    return torch.cat(predicted), torch.cat(truth)


def match_predictions(model: UnifiedModel, batches: Batches) -> tuple[torch.Tensor, torch.Tensor]:
    said, truth = [], []
    for batch, _ in batches:
        memory, _ = model.encode(batch)
        sizes = pool_views(memory, batch)[1]
        present = sizes.flatten() > 0  # a view dropped for want of a negative is not scored
        said.append((model.itm.logits(pool_inputs(memory, batch).flatten(0, 1)) > 0)[present])
        truth.append(torch.tensor([True, False]).repeat(len(sizes))[present])
    return torch.cat(said), torch.cat(truth)


def pair_embeddings(model: UnifiedModel, batches: Batches) -> torch.Tensor:
    """[N, 2, d] over the whole eval set: sample i's views as unit vectors, so z[:, 0] @ z[:, 1].T are cosines."""
    return torch.cat([model.embed(batch) for batch, _ in batches])
