"""How the objectives' losses add up to the one loss a step trains on.

`loss` is the sum over objectives of each objective's mean over the items it
scores in the batch: seq2seq target tokens, mlm masked tokens, mim masked
patches, contrastive pairs, itm views. Per objective rather than per sample,
as in multi-task training that sums task losses (MoMo's accumulated task
gradients, UnIVAL's mixed batches): an objective's pull does not shrink
with its share of a batch, and losses of different kinds (cross-entropy,
MSE) are not averaged into each other; the sampler's dataset weights set
how often each objective is in a batch. An objective with nothing to score
adds an exact zero that still reaches its head's parameters.

`sample_loss` is each sample's mean over its own items, detached: the
per-task losses the training loop logs.
"""

from __future__ import annotations

import torch


class LossTerms:
    def __init__(self, n_samples: int, device: torch.device):
        self.n = n_samples
        self.loss = torch.zeros((), device=device)
        self.sums = torch.zeros(n_samples + 1, device=device)  # slot n: items that count for no sample
        self.counts = torch.zeros(n_samples + 1, device=device)

    def add(self, losses: torch.Tensor, owner: torch.Tensor) -> None:
        """One objective's item losses [k] and each item's sample [k] (-1: padding, not counted)."""
        kept = owner >= 0
        self.loss = self.loss + torch.where(kept, losses, 0).sum() / kept.sum().clamp(min=1)
        slot = torch.where(kept, owner, self.n)
        self.sums.index_add_(0, slot, losses.detach().float())
        self.counts.index_add_(0, slot, kept.float())

    def sample_loss(self) -> torch.Tensor:
        return self.sums[: self.n] / self.counts[: self.n].clamp(min=1)
