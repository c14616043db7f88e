"""Adapters for contrastive adaptation: a small residual MLP per view on the pooled encoder states.

After CLIP-Adapter (Gao et al., 2021): the pretrained encoder is frozen and
only these few parameters learn a new domain's pairs, with the contrastive
loss the encoder was pretrained with. The up-projection starts at zero, so
an untrained adapter passes the pooled states through unchanged: adaptation
starts exactly at the frozen model and its metric.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualMLP(nn.Module):
    def __init__(self, d_model: int, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.down = nn.Linear(d_model, dim)
        self.up = nn.Linear(dim, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.gelu(self.down(self.norm(x))))


class ViewAdapters(nn.Module):
    """One ResidualMLP per view (first and second input): the two sides of a pair shift apart."""

    def __init__(self, d_model: int, dim: int):
        super().__init__()
        self.views = nn.ModuleList([ResidualMLP(d_model, dim) for _ in range(2)])

    def reset_parameters(self) -> None:
        """Zero the up-projections (after the model's own init): the adapter starts as the identity."""
        for view in self.views:
            nn.init.zeros_(view.up.weight)
            nn.init.zeros_(view.up.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled [N, 2, d] -> [N, 2, d], each view through its own MLP."""
        return torch.stack([mlp(pooled[:, v]) for v, mlp in enumerate(self.views)], dim=1)
