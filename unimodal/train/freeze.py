"""`train.trainable`: train some of the model's modules, freeze the rest.

Frozen parameters get `requires_grad = False` before the engine is built:
autograd then stops at them (no gradients, and no backward through a frozen
encoder whose outputs feed only trained heads), and `build_engine` hands the
optimiser only the trained ones, so they hold no optimiser state (Adam's two
moments, ZeRO's fp32 master copy) either.
"""

from __future__ import annotations

from torch import nn

from unimodal.config import modules


def freeze_all_but(model: nn.Module, trainable: list[str] | None) -> int:
    """Leave only `trainable`'s parameters trainable (None: all); returns how many parameters train."""
    children = {n: list(m.parameters()) for n, m in model.named_children() if n != "lm_head"}  # its weight is tok_emb's
    parts = {n: params for n, params in children.items() if params}  # not dropout
    parts |= {n: [p] for n, p in model.named_parameters(recurse=False)}
    unnamed = set(parts) - set(modules())
    if unnamed:
        raise RuntimeError(
            f"unimodal.config.modules() lacks the model's {sorted(unnamed)}: train.trainable cannot name them"
        )
    for name, params in parts.items():
        for p in params:
            p.requires_grad_(trainable is None or name in trainable)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
