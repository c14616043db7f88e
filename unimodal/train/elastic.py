"""Resuming on another topology: a different world size, ZeRO stage or number of loader workers.

Every checkpoint records the topology that wrote it (`topology.json` in its
directory: world size, loader workers, ZeRO stage, precision, gradient
accumulation). A resume compares it with the topology it starts on (`plan`),
before any rank starts and again on rank 0:

- world size or ZeRO stage (1, 2, 3) differ: ZeRO split the optimiser state by
  both, so the checkpoint is converted once by DeepSpeed's own tool
  (`deepspeed.checkpoint.ds_to_universal`) into a universal checkpoint kept
  beside it (`stepNNNNNNNN/universal/`, written under a temporary name, then
  renamed; the original is never touched), which every rank loads with
  `checkpoint.load_universal`. Adam's moments, step counts and fp32 master
  weights carry over whole.
- refused, naming the field: a change of precision (the recipe check,
  unimodal/train/resume.py, names `deepspeed.bf16`/`deepspeed.fp16`), a change
  to or from stage 0 or of world size at stage 0 (`deepspeed.zero_optimization.stage`:
  no ZeRO partitions to convert), and a global batch that the new world size cannot keep
  (`deepspeed.gradient_accumulation_steps`).
- the global batch (`data.batch_tokens` x accumulation x world size) stays
  the stopped run's: accumulation is scaled by old world / new world. A recipe
  that asks for another accumulation than the stopped run's recipe did
  (`--set deepspeed.gradient_accumulation_steps=K`) gets it as given.
- world size or workers differ: the trainer's per-rank parts are dealt to the
  new ranks (`reshard`, unimodal/train/state.py); the job's ledger of
  consumed samples tells each new loader worker its share of what the
  interrupted epochs have left (unimodal/data/ledger.py), and task draws,
  keyed by the global micro-batch, go on with the same sequence. The same
  topology resumes exactly as before, bit for bit.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from deepspeed.checkpoint import ds_to_universal

from unimodal.config import Recipe, RecipeError
from unimodal.train.checkpoint import LATEST, PARTIAL, TOPOLOGY, has_checkpoint, weights_only_loads
from unimodal.train.engine import deepspeed_config, with_deepspeed
from unimodal.train.resume import on_rank0
from unimodal.train.start import layout

UNIVERSAL = "universal"  # the checkpoint converted by ds_to_universal, inside the original's directory
ACCUMULATION = "deepspeed.gradient_accumulation_steps"
STAGE = "deepspeed.zero_optimization.stage"


def asked_accumulation(recipe: Recipe) -> int:
    """The gradient accumulation the recipe asks for (DeepSpeed's default under it)."""
    return int(deepspeed_config(recipe)["gradient_accumulation_steps"])


def topology(recipe: Recipe, world_size: int, asked: int) -> dict[str, Any]:
    """What a checkpoint of `recipe` run on `world_size` ranks records; `asked`: the accumulation its recipe asked."""
    return layout(recipe, world_size) | {
        "workers": recipe.data.workers,
        "accumulation": asked_accumulation(recipe),
        "asked_accumulation": asked,
    }


def saved_topology(ckpt_dir: Path) -> dict[str, Any] | None:
    """The topology that wrote the checkpoint `latest` names; None for one written before topologies were recorded."""
    if not has_checkpoint(ckpt_dir):
        return None
    path = ckpt_dir / (ckpt_dir / LATEST).read_text().strip() / TOPOLOGY
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class Reshape:
    """How this run resumes: its accumulation, whether from the universal checkpoint, whether the ranks changed."""

    accumulation: int  # gradient accumulation steps this run uses
    asked: int  # what its recipe asked for, recorded so a later resume tells a choice from a scaled value
    universal: str | None = None  # the tag of the universal checkpoint to load, if the ZeRO layout changed
    reshard: bool = False  # world size or loader workers changed: per-rank parts dealt anew
    note: str = ""  # what changed, for the log

    def apply(self, recipe: Recipe) -> Recipe:
        """`recipe` as this run trains it: the accumulation set, the universal checkpoint's loading on."""
        universal = {"checkpoint": {"load_universal": True}} if self.universal else {}
        return with_deepspeed(recipe, {"gradient_accumulation_steps": self.accumulation} | universal)


def unchanged(recipe: Recipe) -> Reshape:
    """A run that starts from scratch, or resumes on the topology and accumulation that wrote its checkpoint."""
    asked = asked_accumulation(recipe)
    return Reshape(asked, asked)


def plan(recipe: Recipe, world_size: int, ckpt_dir: Path, where: str) -> Reshape:
    """How a resume of `ckpt_dir` on `world_size` ranks goes; refuses a change it cannot honour, naming the field."""
    asked = asked_accumulation(recipe)
    saved = saved_topology(ckpt_dir)
    here = topology(recipe, world_size, asked)
    if saved is None or saved == here:
        return unchanged(recipe)
    was, now = saved["world_size"], world_size
    stages = saved["zero_stage"], here["zero_stage"]
    if saved["precision"] != here["precision"]:
        raise RecipeError(
            f"{where}: deepspeed.bf16/fp16: the checkpoint in {ckpt_dir} holds {saved['precision']} state, this run "
            f"trains in {here['precision']}; resume in {saved['precision']}, or start a stage with carry: weights"
        )
    if (stages[0] != stages[1] and not set(stages) <= {1, 2}) or (stages[0] == 0 and was != now):
        raise RecipeError(
            f"{where}: {STAGE}: the checkpoint was written by {was} rank(s) at ZeRO stage {stages[0]}, this run is "
            f"{now} rank(s) at stage {stages[1]}; a ZeRO checkpoint (stage 1-3) converts to another world size, "
            f"and between stages 1 and 2; resume at stage {stages[0]}" + ("" if stages[0] else f" on {was} rank(s)")
        )
    if asked != saved["asked_accumulation"]:
        accumulation = asked  # the user's choice: the global batch changes with it
    elif (saved["accumulation"] * was) % now:
        raise RecipeError(
            f"{where}: {ACCUMULATION}: the global batch of {saved['accumulation'] * was} micro-batches per step "
            f"({saved['accumulation']} x {was} ranks) cannot be split over {now} ranks; resume on a world size that "
            f"divides it, or set {ACCUMULATION} explicitly (the global batch then changes)"
        )
    else:
        accumulation = saved["accumulation"] * was // now
    tokens = recipe.data.batch_tokens
    if (was, saved["workers"], stages[0]) == (now, here["workers"], stages[1]) and accumulation == saved[
        "accumulation"
    ]:
        return Reshape(accumulation, asked)  # only the recipe's accumulation was scaled before: nothing changes now
    note = (
        f"topology changed ({was} -> {now} ranks, {saved['workers']} -> {here['workers']} workers, ZeRO stage "
        f"{stages[0]} -> {stages[1]}); gradient accumulation {saved['accumulation']} -> {accumulation}, "
        f"global batch {tokens} x {saved['accumulation']} x {was} -> {tokens} x {accumulation} x {now} tokens"
    )
    reshape = Reshape(accumulation, asked, reshard=(was, saved["workers"]) != (now, here["workers"]), note=note)
    if (was, stages[0]) != (now, stages[1]):
        reshape.universal = f"{(ckpt_dir / LATEST).read_text().strip()}/{UNIVERSAL}"
    return reshape


def untie_steps(engine) -> None:
    """After a universal load: each parameter group its own Adam step count.

    DeepSpeed 0.19.8's ZeRO-3 universal load hands every group one shared step
    tensor, which torch's Adam then advances once per group at each step
    (2 groups: the count runs twice as fast, and the bias correction with it).
    """
    for state in engine.optimizer.optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def convert(ckpt_dir: Path, tag: str) -> None:
    """Write `ckpt_dir/tag` (e.g. step00000004/universal) with ds_to_universal, once; atomically, beside the original."""
    dest = ckpt_dir / tag
    if dest.is_dir():
        return
    source, partial = dest.parent, dest.with_name(PARTIAL + dest.name)
    shutil.rmtree(partial, ignore_errors=True)  # left by a conversion that was killed
    args = argparse.Namespace(
        input_folder=str(source),
        output_folder=str(partial),
        num_extract_workers=1,  # in this process, so that its loads stay weights_only
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # our model declares no tensor-parallel patterns: the version tag is all it needs
    )
    talk = io.StringIO()
    with weights_only_loads(), redirect_stdout(talk), redirect_stderr(talk):
        ds_to_universal.main(args)
    (source / "latest_universal").unlink(missing_ok=True)  # the tool's pointer; we name the tag ourselves
    os.replace(partial, dest)


def agree_reshape(recipe: Recipe, world_size: int, ckpt_dir: Path) -> Reshape:
    """On every rank of a resuming run: rank 0 plans the resume (`plan`) and converts the checkpoint if it must
    (`convert`; done already when `unimodal train` started the ranks), all get the plan."""

    def decide() -> str:
        reshape = plan(recipe, world_size, ckpt_dir, str(recipe.train.output_dir))
        if reshape.universal:
            convert(ckpt_dir, reshape.universal)
        return json.dumps(asdict(reshape))

    return Reshape(**json.loads(on_rank0(decide)))
