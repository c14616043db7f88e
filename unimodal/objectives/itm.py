"""itm: the two inputs encoded together: matched, or mismatched with another sample's second input.

Lay-out view 0 [first, second] (matched), view 1 [first, another sample's
second] (mismatched), no prompt (as contrastive); the mismatched view is a
stand-in of the same length until `pair_negatives` fills it in once the batch
is known. Held-out metric: accuracy, matched and mismatched views told apart.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unimodal.objectives.contrastive import check_pair
from unimodal.objectives.metrics import accuracy
from unimodal.objectives.reading import slot_means, view_ids, view_sizes
from unimodal.objectives.registry import Objective, objective_code

ITM = "itm"


class MatchHead(nn.Module):
    """Does a jointly encoded pair match? One logit from its two inputs' pooled states and their product.

    The product is the comparison. A linear map of the view's pooled state alone
    is a sum over its tokens, so the matching would first have to be built into
    the token states by the encoder: from scratch, on the demo's tone-word pairs,
    the loss sat at ln 2 for 20-45 steps that way, and drops within about 10 with it.
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.out = nn.Linear(3 * d_model, 1)

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """inputs [k, 2, d]: each view's two pooled inputs -> logits [k] (> 0: matched)."""
        first, second = inputs.unbind(-2)
        return self.out(torch.cat([first, second, first * second], dim=-1)).float().squeeze(-1)

    def forward(self, inputs: torch.Tensor, matched: torch.Tensor) -> torch.Tensor:
        """inputs [k, 2, d], matched bool [k] -> binary cross-entropy per view [k]."""
        return F.binary_cross_entropy_with_logits(self.logits(inputs), matched.float(), reduction="none")


def lay_out(prompt: Any, inputs: list[Any], mask_ratio: float | None, seed: int) -> list[Any]:
    return inputs + [replace(s, view=1) for s in inputs]


def pair_negatives(rows: list[list[Any]]) -> list[list[Any]]:
    """Rows with each itm sample's mismatched view filled in, deterministically from the batch.

    Its second input comes from the next itm sample of the same dataset in the
    batch (cyclically) whose second input differs, cut to the stand-in's length
    so the batch stays within the token budget it was packed to. With no such
    sample the mismatched view is dropped and the sample counts its matched view only.
    """
    itm = [s for row in rows for s in row if s.objective == ITM]
    filled: dict[int, Any] = {}
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


def pool_inputs(model: Any, memory: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean encoder state of each of a view's two inputs [N, 2 views, 2 inputs, d], in modality order.

    A dataset's inputs are keyed by modality, so an itm view's tokens of one
    modality are one input. A view without tokens (a dropped negative), and a
    sample of another objective, get whatever comes out: nothing scores them.
    """
    n, m = batch["dataset"].shape[0], len(model.modalities)
    views = view_ids(batch)
    means, counts = slot_means(memory, torch.where(views >= 0, views * m + batch["modality"], -1), 2 * n * m)
    means, counts = means.view(n, 2, m, -1), counts.view(n, 2, m)
    modality = torch.arange(m, device=memory.device)
    present = torch.sort(torch.where(counts > 0, modality, m), dim=-1).values[..., :2].clamp(max=m - 1)
    return means.gather(2, present.unsqueeze(-1).expand(-1, -1, -1, means.shape[-1])).to(memory.dtype)


def items(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The batch's itm samples."""
    return (batch["objective"] == objective_code(ITM)).nonzero().squeeze(1)


def loss(model: Any, batch: dict, itm: torch.Tensor, memory: torch.Tensor, terms: Any) -> None:
    """Binary cross-entropy of each view: view 0 matched, view 1 not (a dropped negative has no tokens, no loss)."""
    matched = torch.tensor([True, False], device=itm.device).repeat(len(itm))
    owner = torch.where(view_sizes(batch)[itm].flatten() > 0, itm.repeat_interleave(2), -1)
    terms.add(model.itm(pool_inputs(model, memory, batch)[itm].flatten(0, 1), matched), owner)


def flops(cfg: Any, batch: dict[str, torch.Tensor], views: Any, modalities: tuple[str, ...]) -> int:
    """The head's one logit from 3 d features, per view with tokens."""
    return 6 * cfg.d_model * int((views[batch["objective"].numpy() == objective_code(ITM)] > 0).sum())


def predict(model: Any, batch: dict, refs: tuple, tokenizer: Any, max_new_tokens: int) -> tuple[torch.Tensor, ...]:
    """Each view said matched (logit > 0) or not, and the truth; a view dropped for want of a negative is not scored."""
    memory, _ = model.encode(batch)
    sizes = view_sizes(batch)
    present = (sizes.flatten() > 0).cpu()
    said = (model.itm.logits(pool_inputs(model, memory, batch).flatten(0, 1)) > 0).cpu()[present]
    return said, torch.tensor([True, False]).repeat(len(sizes))[present]


def measure(predictions: list[tuple[torch.Tensor, ...]], ds: Any) -> dict[str, float]:
    said, truth = zip(*predictions)
    return {"accuracy": accuracy(torch.cat(said), torch.cat(truth))}


OBJECTIVE = Objective(
    name=ITM,
    lay_out=lay_out,
    check=lambda ds: check_pair(ds, ITM),
    metrics=("accuracy",),
    default_metric="accuracy",
    heads={ITM: lambda cfg: MatchHead(cfg.d_model)},
    complete_rows=pair_negatives,
    items=items,
    loss=loss,
    flops=flops,
    predict=predict,
    measure=measure,
)
