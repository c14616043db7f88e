"""Checkpoints through DeepSpeed, and plain weights for the next stage and for eval.

Resume state (model, optimiser, scheduler, loader and sampler positions, RNG
states) goes through DeepSpeed's own `save_checkpoint`/`load_checkpoint`, with
ours in `client_state`. A checkpoint is complete or invisible: every rank
writes its part under `.tmp-stepNNNNNNNN/`, then rank 0 renames the directory
(atomic on one filesystem) and moves `latest` (itself written to a temporary
file and renamed), so a run killed at any moment leaves `latest` naming a
complete checkpoint; leftovers are removed by the next run. A save that fails
(an OSError: disk full, quota) removes its partial directory and stops the run
with `CheckpointSaveFailed`, `latest` unchanged; a `latest` that fails to load
on any rank is passed over, on every rank, for the complete checkpoint before
it. At the end of a stage the full fp32 weights are
gathered here and written by `unimodal.model.pretrained` as `model.safetensors` +
`config.json`: the next curriculum stage and the evaluator load those safely,
without DeepSpeed or pickle.

DeepSpeed reads its checkpoint files with torch.load's weights_only off, which
would unpickle whatever a file holds: a resume, a `carry: optimizer` start and
an export all load under `weights_only_loads`, with the three plain-data
DeepSpeed classes its files hold allowed by name (a loss scaler, a fragment
address, the ZeRO stage enum): a file holding anything else is refused, not run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.runtime.fp16.loss_scaler import LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from unimodal.train.comm import all_reduce_sum

DONE = "done.json"  # written last by a stage that ran all its steps
LATEST = "latest"
TOPOLOGY = "topology.json"  # in each checkpoint's directory: the topology that wrote it (unimodal/train/elastic.py)
PARTIAL = ".tmp-"  # prefix of a checkpoint still being written
TAG = re.compile(r"step(\d{8})")


DEEPSPEED_DATA_CLASSES = [LossScaler, fragment_address, ZeroStageEnum]  # in DeepSpeed's files besides tensors


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every torch.load inside, DeepSpeed's included, is weights_only, DeepSpeed's data classes allowed."""
    load = torch.load

    def safe_load(*args, **kwargs):
        return load(*args, **(kwargs | {"weights_only": True}))

    torch.load = safe_load
    try:
        with torch.serialization.safe_globals(DEEPSPEED_DATA_CLASSES):
            yield
    finally:
        torch.load = load


def tag(step: int) -> str:
    return f"step{step:08d}"


class CheckpointSaveFailed(RuntimeError):
    """A checkpoint could not be written (disk full, quota, I/O error): the run stops, `latest` unchanged."""


def save_checkpoint(
    engine, ckpt_dir: Path, step: int, client_state: dict[str, Any], keep: int, topology: dict[str, Any] | None = None
) -> None:
    """Write step `step`'s checkpoint (all ranks call this); make it `latest`; keep the newest `keep`.

    `topology` (world size, workers, ZeRO stage, precision, accumulation) goes beside it, in `topology.json`,
    for a resume on another topology (unimodal/train/elastic.py); without it, it resumes on its own only.

    A write that fails (an OSError on this rank) leaves `latest` naming the
    previous checkpoint and raises `CheckpointSaveFailed`, naming the directory
    and the error: the run stops rather than train on without a checkpoint.
    """
    partial = ckpt_dir / (PARTIAL + tag(step))
    try:
        _write(engine, ckpt_dir, step, client_state, topology)
    except OSError as err:
        shutil.rmtree(partial, ignore_errors=True)  # what fits on a full disk is of no use
        before = (ckpt_dir / LATEST).read_text().strip() if has_checkpoint(ckpt_dir) else None
        raise CheckpointSaveFailed(
            f"{partial}: saving the step-{step} checkpoint failed: {err}; "
            + (f"'latest' still names {before}, which a resume loads" if before else "there is no earlier checkpoint")
        ) from err
    if dist.get_rank() == 0:
        older = sorted(s for s in saved_steps(ckpt_dir) if s < step)
        later = [s for s in saved_steps(ckpt_dir) if s > step]  # an earlier run's, no longer reachable from `latest`
        for old in later + older[: max(0, len(older) - (keep - 1))]:
            shutil.rmtree(ckpt_dir / tag(old))


def _write(engine, ckpt_dir: Path, step: int, client_state: dict[str, Any], topology: dict[str, Any] | None) -> None:
    final, partial = tag(step), PARTIAL + tag(step)
    if dist.get_rank() == 0:
        shutil.rmtree(ckpt_dir / partial, ignore_errors=True)  # left by a run killed while writing this step
    # DeepSpeed holds every rank at a barrier before writing and after: on return every part is on disk
    engine.save_checkpoint(str(ckpt_dir), tag=partial, client_state=client_state, save_latest=False)
    if dist.get_rank() != 0:
        return
    if topology is not None:
        (ckpt_dir / partial / TOPOLOGY).write_text(json.dumps(topology))
    for path in (ckpt_dir / partial).rglob("*"):
        if path.is_file():
            _fsync(path)
    _fsync(ckpt_dir / partial)
    # a complete one that `latest` never named: its run was killed before moving `latest`
    shutil.rmtree(ckpt_dir / final, ignore_errors=True)
    os.replace(ckpt_dir / partial, ckpt_dir / final)
    _fsync(ckpt_dir)
    pointer = ckpt_dir / (PARTIAL + LATEST)
    pointer.write_text(final)
    _fsync(pointer)
    os.replace(pointer, ckpt_dir / LATEST)
    _fsync(ckpt_dir)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def saved_steps(ckpt_dir: Path) -> list[int]:
    """Steps of the complete checkpoints in `ckpt_dir` (named stepNNNNNNNN)."""
    found = (TAG.fullmatch(p.name) for p in ckpt_dir.iterdir()) if ckpt_dir.is_dir() else ()
    return [int(m.group(1)) for m in found if m]


def remove_partial(ckpt_dir: Path) -> None:
    """Delete what a run killed while saving left behind (rank 0, before its first save)."""
    for path in ckpt_dir.glob(PARTIAL + "*") if ckpt_dir.is_dir() else ():
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def has_checkpoint(ckpt_dir: Path) -> bool:
    return (ckpt_dir / LATEST).is_file()


def load_latest(engine, ckpt_dir: Path, universal: str | None = None) -> dict[str, Any] | None:
    """Load the checkpoint `latest` names into `engine`; its client_state, or None if there is none.

    One that fails to load on any rank (a truncated or damaged file) is passed
    over, logged, for the complete one before it, on every rank alike; the run
    goes on from there. Only when none loads does this raise. `universal` names
    the universal conversion of `latest` to load instead (unimodal/train/elastic.py): it alone is tried.
    """
    if not has_checkpoint(ckpt_dir):
        return None
    name = (ckpt_dir / LATEST).read_text().strip()
    earlier = sorted((s for s in saved_steps(ckpt_dir) if tag(s) < name), reverse=True)
    for candidate in [universal] if universal else [name, *map(tag, earlier)]:
        try:
            with weights_only_loads():
                path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=candidate)
            error = None if path is not None else "DeepSpeed found nothing to load"
        except Exception as err:
            error = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
        if not _any_rank(error is not None):
            return client_state
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(
                f"[unimodal] warning: {ckpt_dir / candidate} could not be loaded ({error or 'on another rank'}); "
                "trying the checkpoint before it",
                flush=True,
            )
    raise RuntimeError(
        f"{ckpt_dir}: no checkpoint could be loaded; the last tried, {candidate}: {error or 'failed on another rank'}"
    )


def _any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on some rank."""
    return all_reduce_sum(torch.tensor([float(flag)])).item() > 0 if dist.is_initialized() else flag


def full_state_dict(engine) -> dict[str, torch.Tensor]:
    """Every parameter whole, on every rank (gathered first under ZeRO-3), as fp32 copies."""
    module = engine.module
    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, enabled=engine.zero_optimization_stage() == 3):
        return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
