"""How a stage starts: from scratch, or from a finished run (`init_from`), carrying what `carry` says.

- `carry: weights` (the default): the run's `model.safetensors`. The optimiser
  starts empty, so world size, ZeRO stage and precision may change between stages.
- `carry: optimizer`: also the optimiser state of the run's final DeepSpeed
  checkpoint (Adam's moments and step counts, the fp32 master weights), so the
  stage continues the optimisation instead of warming Adam up from zero. ZeRO
  keeps that state split into one partition per rank, in the run's precision:
  world size, ZeRO stage and precision must be the run's, checked before launch.

Either way the stage's own schedule (steps, lr, warmup, weight decay, clipping)
starts fresh, and a stage resuming from its own checkpoint takes nothing from
`init_from`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unimodal.config import Recipe, RecipeError
from unimodal.model import ModelConfig, UnifiedModel
from unimodal.model.config import EXECUTION_FIELDS
from unimodal.model.pretrained import load_weights
from unimodal.train.checkpoint import DONE, has_checkpoint, tag, weights_only_loads
from unimodal.train.engine import deepspeed_config


def layout(recipe: Recipe, world_size: int) -> dict[str, Any]:
    """What shapes a run's saved optimiser state; recorded in `done.json`."""
    ds = deepspeed_config(recipe)
    precision = "float32"
    if ds.get("bf16", {}).get("enabled"):
        precision = "bfloat16"
    elif ds.get("fp16", {}).get("enabled"):
        precision = "float16"
    return {"world_size": world_size, "zero_stage": ds["zero_optimization"]["stage"], "precision": precision}


def finished_layout(src: Path, where: str) -> dict[str, Any]:
    """The layout a finished run recorded; refuses a run without a final checkpoint to load."""
    done = src / DONE
    if not done.is_file():
        raise RecipeError(
            f"{where}: init_from: {src} is not a finished stage (no {DONE}); carry: optimizer loads its final checkpoint"
        )
    record = json.loads(done.read_text())
    ckpt_dir = src / "checkpoints"
    if not has_checkpoint(ckpt_dir) or (ckpt_dir / "latest").read_text().strip() != tag(record["steps"]):
        raise RecipeError(
            f"{where}: init_from: {ckpt_dir}/latest is not the final step ({record['steps']}) that carry: optimizer loads"
        )
    return {key: record.get(key) for key in ("world_size", "zero_stage", "precision")}


def check_carry(recipe: Recipe, world_size: int, source: dict[str, Any], where: str) -> None:
    """Refuse `carry: optimizer` where this stage would split or store the optimiser state differently."""
    here = layout(recipe, world_size)
    differ = [
        f"{key.replace('_', ' ')} {source[key]} there, {here[key]} here" for key in here if here[key] != source[key]
    ]
    if differ:
        raise RecipeError(
            f"{where}: carry: optimizer loads the optimiser state of {recipe.init_from}, which ZeRO splits by world size "
            f"and stage and keeps in its precision; they differ ({'; '.join(differ)}). "
            "Run this stage with the same world size, zero_optimization.stage and bf16/fp16, or set carry: weights"
        )


def check_start(recipe: Recipe, world_size: int, where: str) -> None:
    """Before any rank builds a model: what `init_from` and `carry` need is there and fits."""
    if recipe.init_from == "previous":
        raise RecipeError(
            f"{where}: init_from: 'previous' is the previous stage of a curriculum: "
            "run it with `unimodal curriculum`, or --set init_from=DIR"
        )
    if recipe.carry == "optimizer":
        check_carry(recipe, world_size, finished_layout(Path(recipe.init_from), where), where)


def describe(recipe: Recipe) -> str:
    """How a stage that is not resuming starts, for the log."""
    if not recipe.init_from:
        return "from scratch"
    carried = "weights and optimiser state" if recipe.carry == "optimizer" else "weights"
    return f"from the {carried} of {recipe.init_from}"


def init_weights(model: UnifiedModel, cfg: ModelConfig, src: Path) -> None:
    """`src`'s weights into `model`; an adapter that `src` lacks keeps its fresh (identity) init."""
    state, saved = load_weights(src)
    saved = saved.model_copy(
        update={k: getattr(cfg, k) for k in EXECUTION_FIELDS}
    )  # how it ran is no part of the model
    if cfg.adapter_dim and saved.adapter_dim is None:
        saved = saved.model_copy(update={"adapter_dim": cfg.adapter_dim})
        state |= {k: v for k, v in model.state_dict().items() if k.startswith("adapter.")}
    if saved != cfg:
        differ = ", ".join(f"{k} {v} there, {getattr(cfg, k)} here" for k, v in saved if v != getattr(cfg, k))
        raise RecipeError(f"init_from: {src} holds a different model ({differ}): model and tokenizer must match it")
    model.load_state_dict(state)


def load_optimizer_state(engine, src: Path) -> None:
    """Load `src`'s final checkpoint, optimiser state included, into `engine`; not its LR schedule.

    torch's and ZeRO's `load_state_dict` also restore the saved hyperparameters
    (lr, weight decay, betas, clipping): this stage's are put back, and
    DeepSpeed's step counters restart, so only the optimiser's state carries over.
    """
    optimizer = engine.optimizer
    own = [{k: v for k, v in group.items() if k not in ("params", "step")} for group in optimizer.param_groups]
    clip = getattr(optimizer, "clip_grad", None)
    with weights_only_loads():
        path, _ = engine.load_checkpoint(
            str(src / "checkpoints"), load_optimizer_states=True, load_lr_scheduler_states=False
        )
    if path is None:
        raise RuntimeError(f"init_from: {src / 'checkpoints'}: 'latest' names a checkpoint that could not be loaded")
    for group, hyper in zip(optimizer.param_groups, own):
        group.update(hyper)
    if clip is not None:
        optimizer.clip_grad = clip
    engine.global_steps = engine.global_samples = engine.skipped_steps = 0
