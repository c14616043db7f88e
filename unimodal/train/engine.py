"""Model, optimiser and schedule handed to DeepSpeed's engine.

DeepSpeed owns distribution (ZeRO stage, bf16, clipping, accumulation,
checkpoint files); we build a plain torch optimiser and LR schedule and pass
them in, so that the same recipe runs on one CPU or many GPUs.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import deepspeed
import torch
from deepspeed.utils import set_z3_leaf_modules

from unimodal.config import Recipe
from unimodal.model import ModelConfig, UnifiedModel
from unimodal.model.transformer import Block


def model_config(recipe: Recipe, vocab_size: int, patch_dims: dict[str, int]) -> ModelConfig:
    adapter = {"adapter_dim": recipe.model.adapter.dim} if recipe.model.adapter else {}
    execution = {"attention": recipe.model.attention, "compile": recipe.model.compile}
    return ModelConfig.from_preset(
        recipe.model.preset, vocab_size, patch_dims, **(execution | adapter | recipe.model.overrides)
    )


def deepspeed_config(recipe: Recipe) -> dict[str, Any]:
    """DeepSpeed's JSON config: our defaults under the recipe's `deepspeed:` section."""
    defaults = {
        # Batches are token-budgeted, so DeepSpeed's per-GPU sample count is nominal.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "zero_optimization": {"stage": 0},
    }
    return _merge(defaults, recipe.deepspeed)


def with_deepspeed(recipe: Recipe, settings: dict[str, Any]) -> Recipe:
    """`recipe` with `settings` merged into its `deepspeed:` section (the recipe itself unchanged)."""
    return recipe.model_copy(update={"deepspeed": _merge(recipe.deepspeed, settings)})


def _merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def warmup_cosine(warmup: int, total: int, floor: float = 0.1):
    """LR multiplier: linear warmup, then cosine decay to `floor` at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_engine(recipe: Recipe, model: UnifiedModel):
    trained = [p for p in model.parameters() if p.requires_grad]  # frozen ones get no optimiser state
    decay = [p for p in trained if p.ndim >= 2]
    no_decay = [p for p in trained if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.train.lr,
        betas=(0.9, 0.98),
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(recipe.train.warmup_steps, recipe.train.steps)
    )
    if model.cfg.compile:
        # ZeRO-3 gathers a block's parameters at the block (one hook) instead of at each of its layers, whose
        # hooks would run inside the compiled forward and recompile it for every layer
        set_z3_leaf_modules(model, [Block], raise_if_not_found=False)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=schedule, config=deepspeed_config(recipe)
    )
    if engine.world_size == 1 and engine.zero_optimization_stage() == 0:
        # alone, there is nothing to average: skip flattening every gradient into buckets and back
        engine.enable_backward_allreduce = False
    return engine
