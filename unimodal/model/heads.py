"""Heads of the encoder-only objectives (mim, contrastive, itm); each returns one loss per item it scores.

Every head runs every step, on zero rows when the batch holds none of its
samples: all parameters are then in the graph on every rank (DDP and ZeRO
expect a gradient for each), and every rank runs the same modules in the
same order whatever its batch holds. mlm needs no head of its own: it
shares the decoder's tied LM head (see UnifiedModel.forward).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import nn

from unimodal.modalities import patch_modalities

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP: the learned temperature stays at or above 0.01


class MaskedPatchHead(nn.Module):
    """mim: a linear map from a masked patch's encoder state to its pixels (SimMIM).

    The targets are normalised per patch (MAE's norm_pix_loss, which MAE found
    to give better representations): local contrast, not absolute brightness.
    """

    def __init__(self, d_model: int, patch_dims: dict[str, int]):
        super().__init__()
        self.out = nn.ModuleDict({m: nn.Linear(d_model, patch_dims[m]) for m in patch_modalities()})

    def forward(self, states: dict[str, torch.Tensor], patches: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per modality, states [k, d] at masked patches and the patches [k, D] (float) -> MSE per patch."""
        losses = []
        for m in patch_modalities():
            target = patches[m] - patches[m].mean(-1, keepdim=True)
            target = target / (target.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt()
            losses.append((self.out[m](states[m]).float() - target).pow(2).mean(-1))
        return torch.cat(losses)


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
    """contrastive: CLIP's symmetric InfoNCE between two views of each pair.

    Pooled views are projected (one projection: one encoder serves both
    modalities) and L2-normalised; every other pair of the step, on every
    rank, is a negative. The temperature is learned, from CLIP's 0.07.
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


class MatchHead(nn.Module):
    """itm: does a jointly encoded pair match? One logit from its two inputs' pooled states and their product.

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
