"""mim: masked patches' normalised values regressed from the encoder (MoMo, SimMIM).

Lay-out [prompt, inputs...], `mask_ratio` (SimMIM's 60% by default) of each
image, audio or video input's patches masked (unimodal/objectives/masking.py).
The head maps a masked patch's encoder state to its values, per modality. No
held-out metric: a reconstruction error has no scale to read it on.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from unimodal.modalities.text import TEXT
from unimodal.objectives.masking import mask_inputs, own_tokens
from unimodal.objectives.reading import stem_input
from unimodal.objectives.registry import Objective, objective_code

MIM = "mim"


class MaskedPatchHead(nn.Module):
    """A linear map per patch modality from a masked patch's encoder state to its values (SimMIM).

    The targets are normalised per patch (MAE's norm_pix_loss, which MAE found
    to give better representations): local contrast, not absolute brightness.
    It runs every step, on zero rows when the batch holds no masked patches, so
    its parameters are in the graph on every rank.
    """

    def __init__(self, d_model: int, patch_dims: dict[str, int]):
        super().__init__()
        self.out = nn.ModuleDict({m: nn.Linear(d_model, dim) for m, dim in patch_dims.items()})

    def forward(self, states: dict[str, torch.Tensor], patches: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per modality, states [k, d] at masked patches and the patches [k, D] (float) -> MSE per patch."""
        losses = []
        for m, out in self.out.items():
            target = patches[m] - patches[m].mean(-1, keepdim=True)
            target = target / (target.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt()
            losses.append((out(states[m]).float() - target).pow(2).mean(-1))
        return torch.cat(losses)


def check(ds: Any) -> None:
    if all(m == TEXT for m in ds.inputs):
        raise ValueError(f"inputs: objective {MIM} masks patches and needs an image, audio or video input")


def lay_out(prompt: Any, inputs: list[Any], mask_ratio: float, seed: int) -> list[Any]:
    return [prompt, *mask_inputs(inputs, lambda s: s.modality != TEXT, mask_ratio, seed)]


def items(model: Any, batch: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per patch modality: flat [B * L] positions of mim samples' masked patches, and the same as rows of patches_<m>."""
    masked = (batch["enc_masked"] & own_tokens(batch, objective_code(MIM))).flatten()
    modality, out = batch["modality"].flatten(), {}
    for m in model.cfg.patch_dims:
        of_m = modality == model.modalities.index(m)
        out[m] = (masked & of_m).nonzero().squeeze(1), masked[of_m].nonzero().squeeze(1)
    return out


def loss(model: Any, batch: dict, items: dict, memory: torch.Tensor, terms: Any) -> None:
    """Each masked patch's encoder state against its values, all patch modalities in one term."""
    states = {m: memory.flatten(0, 1)[at] for m, (at, _) in items.items()}
    pixels = {m: stem_input(batch[f"patches_{m}"][rows], torch.float32) for m, (_, rows) in items.items()}
    owner = torch.cat([batch["enc_sample"].flatten()[at] for at, _ in items.values()])
    terms.add(model.mim(states, pixels), owner)


def flops(cfg: Any, batch: dict[str, torch.Tensor], views: Any, modalities: tuple[str, ...]) -> int:
    """The head's linear map at each masked patch of a mim sample."""
    masked = batch["enc_masked"].numpy().copy()
    masked &= (batch["objective"].numpy() == objective_code(MIM))[batch["enc_sample"].numpy().clip(min=0)]
    modality = batch["modality"].numpy()
    return sum(
        2 * cfg.d_model * dim * int((masked & (modality == modalities.index(m))).sum())
        for m, dim in cfg.patch_dims.items()
    )


OBJECTIVE = Objective(
    name=MIM,
    lay_out=lay_out,
    check=check,
    mask_ratio=0.6,
    heads={MIM: lambda cfg: MaskedPatchHead(cfg.d_model, cfg.patch_dims)},
    items=items,
    loss=loss,
    flops=flops,
)
