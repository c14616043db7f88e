"""Whether a stage resumes or starts over, decided before any rank starts (and again on rank 0).

Resuming is the default: a stage whose output directory holds a checkpoint
goes on from it, so a resubmitted job, a torchrun restart or a requeue
continues the run. It must be the same run: the recipe saved beside the
checkpoint (`recipe.yaml`) and this one must agree in everything a checkpoint
depends on (`RESUME_FIELDS`); steps, learning rate, logging and checkpoint
cadence may change. A recipe that differs there is refused, naming the
fields. `--fresh` starts over: the earlier run is first moved aside, its
directory renamed with a timestamp, never deleted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch.distributed as dist
import yaml

from unimodal.config import Recipe, RecipeError
from unimodal.train.checkpoint import has_checkpoint
from unimodal.train.lock import LOCK, acquire, keep_fresh, release

# What a checkpoint depends on: the stage, the weights' shapes, the data order, the sharding of the state.
RESUME_FIELDS = ("name", "seed", "model", "tokenizer", "data", "deepspeed", "train.trainable")
# Within them, the topology, which may change on resume: checked against the checkpoint's (unimodal/train/elastic.py)
TOPOLOGY_FIELDS = ("data.workers", "deepspeed.gradient_accumulation_steps", "deepspeed.zero_optimization.stage")
SAVED_RECIPE = "recipe.yaml"
T = TypeVar("T")


def restarted() -> bool:
    """This process is a restart of the job under torchrun or a SLURM requeue: it must never start over."""
    return (
        int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
        or int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0
    )


def _field(tree: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def _differences(saved: Any, current: Any, where: str) -> list[str]:
    if where in TOPOLOGY_FIELDS:
        return []
    if isinstance(saved, dict) and isinstance(current, dict):
        keys = list(saved) + [k for k in current if k not in saved]
        return [d for k in keys for d in _differences(saved.get(k), current.get(k), f"{where}.{k}")]
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        return [d for i, (a, b) in enumerate(zip(saved, current)) for d in _differences(a, b, f"{where}.{i}")]
    return [] if saved == current else [f"{where} ({saved!r} there, {current!r} here)"]


def recipe_differences(recipe: Recipe, saved: dict[str, Any]) -> list[str]:
    """The fields of `RESUME_FIELDS` in which `recipe` differs from the `saved` one, leaf by leaf, topology aside."""
    current = recipe.model_dump(mode="json")
    return [d for f in RESUME_FIELDS for d in _differences(_field(saved, f), _field(current, f), f)]


def should_resume(recipe: Recipe, where: str) -> bool:
    """True when the stage's output directory holds a checkpoint of this run; refuses one of another."""
    out = recipe.train.output_dir
    if not has_checkpoint(out / "checkpoints"):
        return False
    saved = out / SAVED_RECIPE
    if saved.is_file():
        differ = recipe_differences(recipe, yaml.safe_load(saved.read_text()))
        if differ:
            raise RecipeError(
                f"{where}: {out} holds a checkpoint of a run whose recipe ({saved}) differs in what a resume "
                f"depends on: {'; '.join(differ)}. Use the same recipe to resume it, --fresh to start over "
                "(the earlier run is kept, renamed), or set train.output_dir to another directory"
            )
    return True


def holds_a_run(out_dir: Path) -> bool:
    """A checkpoint or logged metrics: what `--fresh` keeps (a lone partial checkpoint is nothing to keep)."""
    return has_checkpoint(out_dir / "checkpoints") or (out_dir / "metrics.jsonl").is_file()


def archive(out_dir: Path) -> Path | None:
    """Move an earlier run aside (`OUT.YYYYmmdd-HHMMSS`, its last change); where it went, or None if there was none."""
    if not holds_a_run(out_dir):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(out_dir.stat().st_mtime))
    target, n = out_dir.with_name(f"{out_dir.name}.{stamp}"), 1
    while target.exists():
        n += 1
        target = out_dir.with_name(f"{out_dir.name}.{stamp}-{n}")
    os.rename(out_dir, target)
    (target / LOCK).unlink(missing_ok=True)  # the lock stays with the directory being written, not the kept run
    print(f"[unimodal] --fresh: the earlier run in {out_dir} is kept as {target}", flush=True)
    return target


def claim(recipe: Recipe, resume: bool, launcher_pid: int, where: str) -> bool:
    """Lock the stage's output directory for this job, then decide: True to resume from its checkpoint.

    `resume=False` (`--fresh`) moves an earlier run aside first, except in a
    restarted job (torchrun, a requeue), which continues the run it started.
    """
    out = recipe.train.output_dir
    acquire(out, recipe.train.stale_lock_s, launcher_pid)
    if resume or restarted():
        try:
            return should_resume(recipe, where)
        except RecipeError:
            release(out, launcher_pid)
            raise
    if archive(out):
        acquire(out, recipe.train.stale_lock_s, launcher_pid)
    return False


def on_rank0(decide: Callable[[], T]) -> T:
    """`decide()` run on rank 0 alone, its answer (plain data) on every rank; a RecipeError it raises is raised on
    every rank alike."""
    answer: list[Any] = [None, None]
    if dist.get_rank() == 0:
        try:
            answer = [decide(), None]
        except RecipeError as err:
            answer = [None, str(err)]
    dist.broadcast_object_list(answer, src=0)
    if answer[1] is not None:
        raise RecipeError(answer[1])
    return answer[0]


def agree(recipe: Recipe, resume: bool) -> bool:
    """On every rank, once the process group is up: rank 0 claims the output directory (`claim`), all get its answer.

    A refusal (locked, another run's checkpoint) is raised on every rank alike, before anything is written.
    """

    def decide() -> bool:
        resuming = claim(recipe, resume, os.getppid(), str(recipe.train.output_dir))  # the parent: the job's launcher
        keep_fresh(recipe.train.output_dir, recipe.train.stale_lock_s)
        return resuming

    return on_rank0(decide)
