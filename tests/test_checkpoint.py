"""Checkpoint files, the non-finite-loss skip and the launcher's signal forwarding, each on its own.

Training runs here are single-rank (gloo, world size 1) in a child process
that this file's code starts, so a fault can be injected into a real model:
the loss of chosen batches is made NaN, as a diverging run or a corrupt batch
would make it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import sys
import threading
import time

import pytest
import torch
from conftest import SMOKE, PlantsAFile
from safetensors.torch import load_file

from unimodal.model import UnifiedModel
from unimodal.recipe import load_recipe
from unimodal.train.checkpoint import LATEST, load_latest, remove_partial, saved_steps, tag
from unimodal.train.guard import NonFiniteLoss
from unimodal.train.launch import free_port, run_ranks


def train_child(workspace, out, nan_at: set[int], overrides: list[str], port: int) -> None:
    """In a fresh process (DeepSpeed's groups outlive a process group): train, the loss of the
    `nan_at`-th forward passes (from 1) made NaN; the outcome goes to `out`.json."""
    import torch.distributed as dist

    from unimodal.train.loop import train

    os.chdir(workspace)
    os.environ.update(
        DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"
    )
    torch.set_num_threads(1)
    forward, calls = UnifiedModel.forward, [0]

    def nan_at_some(self, batch):
        result = forward(self, batch)
        calls[0] += 1
        return result | {"loss": result["loss"] * float("nan")} if calls[0] in nan_at else result

    UnifiedModel.forward = nan_at_some
    recipe = load_recipe(
        SMOKE / "stage1.yaml",
        ["data.workers=0", "logging.every=1", "logging.wandb.mode=disabled", f"train.output_dir={out}", *overrides],
    )
    try:
        outcome = {"done": train(recipe, resume=False), "forwards": calls[0]}
    except NonFiniteLoss as err:
        outcome = {"error": str(err)}
    out.with_suffix(".json").write_text(json.dumps(outcome))
    dist.destroy_process_group()


def train_with_nan_at(workspace, out, nan_at: set[int], *overrides: str) -> dict:
    child = multiprocessing.get_context("spawn").Process(
        target=train_child, args=(workspace, out, nan_at, list(overrides), free_port())
    )
    child.start()
    child.join(timeout=300)
    assert child.exitcode == 0
    return json.loads(out.with_suffix(".json").read_text())


def records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def nan_run(workspace, tmp_path_factory):
    """4 steps, the 2nd and 3rd batches' loss NaN, a checkpoint every step, the newest 2 kept;
    started beside the partial checkpoint a run killed while saving step 4 left."""
    out = tmp_path_factory.mktemp("nan") / "run"
    partial = out / "checkpoints" / ".tmp-step00000004"
    partial.mkdir(parents=True)
    (partial / "mp_rank_00_model_states.pt").write_bytes(b"half a file")
    sets = ["train.steps=4", "train.max_nonfinite_steps=2", "train.checkpoint_every=1", "train.keep_checkpoints=2"]
    return out, train_with_nan_at(workspace, out, {2, 3}, *sets)


def test_a_batch_with_a_nan_loss_is_skipped_and_counted(nan_run):
    out, outcome = nan_run
    assert outcome["done"]["steps"] == 4 and outcome["forwards"] == 6  # two batches replaced
    recs = records(out)
    assert [r["skipped_nonfinite"] for r in recs] == [0, 2, 2, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in recs)
    assert all(torch.isfinite(t).all() for t in load_file(str(out / "model.safetensors")).values())


def test_keeps_the_newest_checkpoints_and_removes_a_partial_one(nan_run):
    ckpt = nan_run[0] / "checkpoints"
    assert sorted(saved_steps(ckpt)) == [3, 4] and (ckpt / LATEST).read_text() == tag(4)
    assert not list(ckpt.glob(".tmp-*"))


def test_too_many_nan_losses_stop_the_run_naming_the_step_and_the_field(workspace, tmp_path):
    outcome = train_with_nan_at(
        workspace, tmp_path / "diverged", set(range(3, 100)), "train.steps=6", "train.max_nonfinite_steps=1"
    )
    assert re.search(r"step 3: .* 2 batches, over train.max_nonfinite_steps=1", outcome["error"]), outcome


def test_remove_partial_leaves_complete_checkpoints(tmp_path):
    for name in (".tmp-step00000020", tag(10)):
        (tmp_path / name).mkdir()
    (tmp_path / ".tmp-latest").write_text(tag(20))
    remove_partial(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [tag(10)]


RANK = """
import os, signal, sys, time
signal.signal(signal.SIGUSR1, lambda *_: sys.exit(0))  # as a rank does: stop cleanly
open(os.path.join(sys.argv[1], os.environ["RANK"]), "w").close()
if os.environ["RANK"] == sys.argv[2]:
    sys.exit(3)
time.sleep(600)
"""


def signal_when_ready(folder, n: int) -> None:
    while len(list(folder.iterdir())) < n:
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGUSR1)  # this process, the launcher: not the ranks


def test_launcher_passes_sigusr1_to_the_ranks_and_a_clean_stop_is_success(tmp_path):
    timer = threading.Thread(target=signal_when_ready, args=(tmp_path, 2))
    timer.start()
    try:
        assert run_ranks([sys.executable, "-c", RANK, str(tmp_path), "none"], 2) == 0
    finally:
        timer.join()


def test_launcher_ends_the_other_ranks_when_one_fails(tmp_path):
    started = time.perf_counter()
    assert run_ranks([sys.executable, "-c", RANK, str(tmp_path), "1"], 2) == 3
    assert time.perf_counter() - started < 300  # rank 0 was killed, not waited for


def test_resume_reads_checkpoint_files_without_unpickling_code(tmp_path):
    planted, ckpt = tmp_path / "planted", tmp_path / "checkpoints"
    (ckpt / tag(2)).mkdir(parents=True)
    (ckpt / LATEST).write_text(tag(2))
    torch.save({"module": PlantsAFile(planted)}, ckpt / tag(2) / "mp_rank_00_model_states.pt")

    class DeepSpeedEngine:  # reads its files as DeepSpeed 0.19.8's engine does
        def load_checkpoint(self, load_dir, tag):
            return load_dir, torch.load(f"{load_dir}/{tag}/mp_rank_00_model_states.pt", weights_only=False)

    with pytest.raises(Exception, match="Weights only load failed"):
        load_latest(DeepSpeedEngine(), ckpt)
    assert not planted.exists()
