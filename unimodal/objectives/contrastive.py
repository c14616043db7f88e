"""contrastive: the two inputs encoded apart, pooled, InfoNCE over the step's pairs on all ranks (CLIP).

Lay-out view 0 [first input], view 1 [second input], no prompt: it would be
the same few tokens in every pooled view, and on the demo data that common
part alone held contrastive training at log(batch) (the views' embeddings
collapsed onto it). With `model.adapter` set, each pooled view passes its own
residual MLP first (unimodal/objectives/adapter.py, contrastive adaptation).
Held-out metric: recall@K, the true partner among the K most similar of the
eval set, both ways, averaged.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import nn

from unimodal.objectives.adapter import ViewAdapters
from unimodal.objectives.metrics import recall_at_k
from unimodal.objectives.reading import pool_views
from unimodal.objectives.registry import Objective, objective_code

CONTRASTIVE = "contrastive"
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP: the learned temperature stays at or above 0.01


def rank_counts(n: int, device: torch.device) -> list[int]:
    """How many rows each rank holds, in rank order (an all_gather); [n] in one process."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [n]
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([n], device=device))
    return [int(c) for c in counts]


def gather_rows(z: torch.Tensor, counts: list[int]) -> tuple[torch.Tensor, int]:
    """Every rank's rows of `z` in rank order (`counts` from `rank_counts`), and where this rank's begin.

    torch.distributed.nn's all_gather keeps the graph: in backward each rank's
    rows receive the sum of every rank's gradient for them, so another rank's
    loss, which used them as negatives, trains this rank's encoder too. Rows
    are padded to the largest count for the gather and cut back after.
    """
    if len(counts) == 1 or not max(counts):  # the same answer on every rank: none gathers
        return z, 0
    parts = dist_nn.all_gather(F.pad(z, (0, 0, 0, max(counts) - len(z))))
    return torch.cat([p[:c] for p, c in zip(parts, counts)]), sum(counts[: dist.get_rank()])


class ContrastiveHead(nn.Module):
    """CLIP's symmetric InfoNCE between two views of each pair.

    Pooled views are projected (one projection: one encoder serves both
    modalities) and L2-normalised; every other pair of the step, on every
    rank, is a negative. The temperature is learned, from CLIP's 0.07. It runs
    every step, on zero rows when the batch holds no pairs, so its parameters
    are in the graph on every rank.
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / 0.07)))

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        """Unit vectors (float32) to compare: retrieval uses these."""
        return F.normalize(self.proj(pooled).float(), dim=-1)

    def forward(self, a: torch.Tensor, b: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """a, b [n, d]: the pooled views of this rank's n pairs; counts: every rank's n -> each pair's loss [n]."""
        za, zb = self.embed(a), self.embed(b)
        both, offset = gather_rows(torch.cat([za, zb], dim=-1), counts)
        all_a, all_b = both.chunk(2, dim=-1)
        scale = self.logit_scale.float().clamp(max=MAX_LOGIT_SCALE).exp()
        labels = torch.arange(len(za), device=za.device) + offset
        a_to_b = F.cross_entropy(scale * za @ all_b.T, labels, reduction="none")
        b_to_a = F.cross_entropy(scale * zb @ all_a.T, labels, reduction="none")
        return (a_to_b + b_to_a) / 2


def adapters(cfg: Any) -> nn.Module:
    """Contrastive adaptation's per-view MLPs; without `model.adapter`, the identity (no parameters)."""
    return ViewAdapters(cfg.d_model, cfg.adapter_dim) if cfg.adapter_dim else nn.Identity()


def check_pair(ds: Any, name: str) -> None:
    """A pair objective's dataset: exactly two inputs and no prompt."""
    if len(ds.inputs) != 2:
        raise ValueError(f"inputs: objective {name} pairs exactly two inputs, got {len(ds.inputs)}")
    if ds.prompt is not None:
        raise ValueError(f"prompt: objective {name} encodes its two inputs without a prompt; leave prompt out")


def lay_out(prompt: Any, inputs: list[Any], mask_ratio: float | None, seed: int) -> list[Any]:
    first, second = inputs
    return [first, replace(second, view=1)]


def items(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """The batch's pair samples, and every rank's pair count (gathered unless the run has no contrastive dataset:
    with `model.gather_pairs` every rank joins this collective at every step, whatever its batch holds)."""
    pairs = (batch["objective"] == objective_code(CONTRASTIVE)).nonzero().squeeze(1)
    return pairs, rank_counts(len(pairs), pairs.device) if model.gather_pairs else [len(pairs)]


def loss(model: Any, batch: dict, items: tuple, memory: torch.Tensor, terms: Any) -> None:
    """InfoNCE between each pair's two mean-pooled (and adapted) views."""
    pairs, counts = items
    adapted = model.adapter(pool_views(memory, batch)[0][pairs])
    terms.add(model.contrastive(adapted[:, 0], adapted[:, 1], counts), pairs)


def flops(cfg: Any, batch: dict[str, torch.Tensor], views: Any, modalities: tuple[str, ...]) -> int:
    """Both views projected, both similarity matrices (against this rank's pairs: the gathered ones are not counted)."""
    pairs, d = int((batch["objective"].numpy() == objective_code(CONTRASTIVE)).sum()), cfg.d_model
    return pairs * 4 * d * d + 4 * pairs * pairs * d


@torch.no_grad()
def embed(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Unit vectors [N, 2, d] of each sample's two views, as the contrastive loss compares them."""
    memory, _ = model.encode(batch)
    return model.contrastive.embed(model.adapter(pool_views(memory, batch)[0]))


def recall_k(metric: str) -> int:
    """K of a `recall@K` metric."""
    return int(metric.removeprefix("recall@"))


def predict(model: Any, batch: dict, refs: tuple, tokenizer: Any, max_new_tokens: int) -> torch.Tensor:
    """Each sample's two views as unit vectors [n, 2, d]."""
    return embed(model, batch).cpu()


def measure(predictions: list[torch.Tensor], ds: Any) -> dict[str, float]:
    """Retrieval over the whole eval set, both ways, averaged."""
    z = torch.cat(predictions)  # [N, 2, d], unit vectors
    sim = z[:, 0] @ z[:, 1].T  # row i: sample i's first view against every second view
    return {m: (recall_at_k(sim, recall_k(m)) + recall_at_k(sim.T, recall_k(m))) / 2 for m in ds.metrics}


OBJECTIVE = Objective(
    name=CONTRASTIVE,
    lay_out=lay_out,
    check=lambda ds: check_pair(ds, CONTRASTIVE),
    metrics=("recall@K",),
    default_metric="recall@1",
    heads={CONTRASTIVE: lambda cfg: ContrastiveHead(cfg.d_model), "adapter": adapters},
    items=items,
    loss=loss,
    flops=flops,
    predict=predict,
    measure=measure,
)
