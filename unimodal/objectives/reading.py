"""How the model and the objectives read a batch: each token's view, pooled encoder states, patch values.

Shared by the model (unimodal/model/unified.py encodes with them) and the
objectives that pool views or regress patches, so it lives at the ground.
"""

from __future__ import annotations

import torch


def stem_input(patches: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Patches in the model's dtype; uint8 pixels (image, video) scaled to [-1, 1].

    The loader ships pixels as uint8, a quarter of the bytes of floats through
    worker handover and host-to-device copies; the scaling happens on device.
    """
    if patches.dtype == torch.uint8:
        return patches.to(dtype).div_(127.5).sub_(1.0)
    return patches.to(dtype)


def view_ids(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each token's view number 2 * sample + view, -1 at padding: what attends and pools together."""
    sample = batch["enc_sample"]
    return torch.where(sample >= 0, 2 * sample + batch["enc_view"], -1)


def slot_counts(slot: torch.Tensor, n_slots: int) -> torch.Tensor:
    """Tokens per slot [n_slots + 1] (float) of tokens numbered by flat `slot`, padding in the spare last slot."""
    return torch.zeros(n_slots + 1, device=slot.device).index_add_(0, slot, torch.ones_like(slot, dtype=torch.float32))


def slot_means(memory: torch.Tensor, slot: torch.Tensor, n_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean encoder state per slot [n_slots, d] (summed in fp32) of tokens numbered by `slot` [B, L] (-1: none), and the token counts."""
    slot = torch.where(slot >= 0, slot, n_slots).flatten()  # padding into a spare slot
    sums = memory.new_zeros(n_slots + 1, memory.shape[-1], dtype=torch.float32)
    sums.index_add_(0, slot, memory.flatten(0, 1).float())
    counts = slot_counts(slot, n_slots)
    return sums[:n_slots] / counts[:n_slots].clamp(min=1).unsqueeze(-1), counts[:n_slots]


def pool_views(memory: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean encoder state of each sample's two views [N, 2, d], and their token counts [N, 2]."""
    n = batch["dataset"].shape[0]
    means, counts = slot_means(memory, view_ids(batch), 2 * n)
    return means.view(n, 2, -1).to(memory.dtype), counts.view(n, 2)


def view_sizes(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Tokens in each sample's two views [N, 2] (float), as `pool_views` counts them."""
    n, views = batch["dataset"].shape[0], view_ids(batch)
    return slot_counts(torch.where(views >= 0, views, 2 * n).flatten(), 2 * n)[: 2 * n].view(n, 2)
