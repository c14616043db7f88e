"""`unimodal train RECIPE --nproc N`: validate here, then start N ranks with DeepSpeed's launcher.

Validation happens in this process, before any rank starts, so a broken
recipe fails in a second with a message naming the file and the field.
On a machine without CUDA, DeepSpeed's CPU accelerator and gloo are used.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from unimodal.config import load_recipe


class StageFailed(RuntimeError):
    """The ranks of a stage exited with an error (their output says why)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(recipe_path: str | Path, nproc: int, overrides: list[str], resume: bool) -> list[str]:
    cmd = [
        sys.executable, "-m", "deepspeed.launcher.runner",
        "--num_gpus", str(nproc),
        "--master_port", str(free_port()),
        "--module", "unimodal.train",
        str(recipe_path),
    ]
    for item in overrides:
        cmd += ["--set", item]
    if resume:
        cmd.append("--resume")
    return cmd


def launch_env() -> dict[str, str]:
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    return env


def run_stage(recipe_path: str | Path, nproc: int, overrides: list[str], resume: bool) -> None:
    """Validate, then run one stage on `nproc` local ranks; raises if the ranks fail."""
    from unimodal.train.checkpoint import has_checkpoint  # these import deepspeed: not for every `unimodal` command
    from unimodal.train.start import check_start

    recipe = load_recipe(recipe_path, overrides)
    if not (resume and has_checkpoint(recipe.train.output_dir / "checkpoints")):
        check_start(recipe, nproc, str(recipe_path))
    cmd = launch_command(recipe_path, nproc, overrides, resume)
    result = subprocess.run(cmd, env=launch_env())
    if result.returncode != 0:
        raise StageFailed(f"{recipe_path}: training exited with status {result.returncode}")
