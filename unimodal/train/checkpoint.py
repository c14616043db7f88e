"""Checkpoints through DeepSpeed, and plain weights for the next stage and for eval.

Resume state (model, optimiser, scheduler, loader and sampler positions) goes
through DeepSpeed's own `save_checkpoint`/`load_checkpoint`, with our
positions in `client_state`. At the end of a stage the full fp32 weights are
also written as `model.safetensors` + `model.json`: the next curriculum stage
and the evaluator load those safely, without DeepSpeed or pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import deepspeed
import torch
from safetensors.torch import load_file, save_file

from unimodal.model import ModelConfig

WEIGHTS, MODEL_CONFIG = "model.safetensors", "model.json"
DONE = "done.json"  # written last by a stage that ran all its steps


def tag(step: int) -> str:
    return f"step{step:08d}"


def save_checkpoint(engine, ckpt_dir: Path, step: int, client_state: dict[str, Any]) -> None:
    engine.save_checkpoint(str(ckpt_dir), tag=tag(step), client_state=client_state)


def has_checkpoint(ckpt_dir: Path) -> bool:
    return (ckpt_dir / "latest").is_file()


def load_latest(engine, ckpt_dir: Path) -> dict[str, Any] | None:
    """Load the newest checkpoint into `engine`; its client_state, or None if there is none."""
    if not has_checkpoint(ckpt_dir):
        return None
    path, client_state = engine.load_checkpoint(str(ckpt_dir))
    if path is None:
        raise RuntimeError(f"{ckpt_dir}: 'latest' names a checkpoint that could not be loaded")
    return client_state


def full_state_dict(engine) -> dict[str, torch.Tensor]:
    """Every parameter whole, on every rank (gathered first under ZeRO-3), as fp32 copies."""
    module = engine.module
    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, enabled=engine.zero_optimization_stage() == 3):
        return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


def save_weights(out_dir: Path, state: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(out_dir / WEIGHTS)
    (out_dir / MODEL_CONFIG).write_text(cfg.model_dump_json(indent=2))


def load_weights(src_dir: Path) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    src_dir = Path(src_dir)
    cfg = ModelConfig.model_validate(json.loads((src_dir / MODEL_CONFIG).read_text()))
    return load_file(str(src_dir / WEIGHTS)), cfg
