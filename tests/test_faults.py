"""Faults a cluster job meets, survived with nothing lost.

A rank killed under torchrun's restarts, a job run again (with and without
--fresh), two runs on one output directory, a hung rank, a failed save and a
damaged checkpoint. Multi-rank runs are few and each serves several checks.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, SMOKE, unimodal, unimodal_env
from test_resume import deterministic, descendants, logged_steps
from unimodal.config import RecipeError, load_recipe
from unimodal.train import checkpoint
from unimodal.train.checkpoint import LATEST, CheckpointSaveFailed, load_latest, save_checkpoint, saved_steps, tag
from unimodal.train.lock import LOCK, OutputDirLocked, acquire, release
from unimodal.train.resume import archive, recipe_differences, should_resume

STEPS, EVERY = 6, 2
SETS = [f"train.steps={STEPS}", f"train.checkpoint_every={EVERY}", "logging.every=1", "logging.wandb.mode=disabled"]


def set_args(out: Path, *extra: str) -> list[str]:
    return [a for s in [*SETS, *extra, f"train.output_dir={out}"] for a in ("--set", s)]


def train(out: Path, cwd: Path, *flags: str, sets: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return unimodal("train", str(SMOKE / "stage1.yaml"), "--nproc", "2", *set_args(out, *sets), *flags, cwd=cwd)


def recipe_at(out: Path, *sets: str):
    return load_recipe(SMOKE / "stage1.yaml", [*SETS, *sets, f"train.output_dir={out}"], check_files=False)


# --- the lock ---------------------------------------------------------------------------------------------


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def test_a_lock_is_refused_to_another_live_run_and_taken_over_when_stale(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        acquire(out, 900, holder.pid)
        acquire(out, 900, holder.pid)  # the same job again: a rank 0 under its launcher, a torchrun restart
        with pytest.raises(OutputDirLocked, match=rf"{out} is being written by another run \(pid {holder.pid} on {socket.gethostname()}"):
            acquire(out, 900, os.getpid())
    finally:
        holder.kill()
        holder.wait()
    acquire(out, 900, os.getpid())  # its process is gone
    assert "taking over" in capsys.readouterr().out and json.loads((out / LOCK).read_text())["pid"] == os.getpid()

    elsewhere = {"host": "node17", "pid": 1, "job": "", "started": time.time()}
    (out / LOCK).write_text(json.dumps(elsewhere))
    with pytest.raises(OutputDirLocked, match="pid 1 on node17"):  # another host's: alive as long as it is refreshed
        acquire(out, 900, os.getpid())
    old = time.time() - 1000
    os.utime(out / LOCK, (old, old))
    acquire(out, 900, os.getpid())
    assert "not refreshed for 1000 s, over train.stale_lock_s=900" in capsys.readouterr().out
    release(out, os.getpid())
    assert not (out / LOCK).exists()


def test_a_requeued_slurm_job_owns_the_lock_of_its_earlier_run(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    (tmp_path / LOCK).write_text(json.dumps({"host": "node03", "pid": 99, "job": "4242", "started": time.time()}))
    acquire(tmp_path, 900, dead_pid())
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    with pytest.raises(OutputDirLocked, match="SLURM job 4242"):
        acquire(tmp_path, 900, os.getpid())


# --- what a resume depends on -------------------------------------------------------------------------------


def test_a_recipe_that_differs_in_what_a_resume_depends_on_is_refused_naming_the_fields(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / LATEST).write_text(tag(2))
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe_at(out).model_dump(mode="json")))
    assert should_resume(recipe_at(out, "train.steps=600", "logging.every=5", "train.checkpoint_every=7", "train.lr=1e-4"), "r.yaml")
    changed = recipe_at(out, "seed=3", "model.overrides.dropout=0.2", "data.datasets.1.weight=2.0")
    assert recipe_differences(changed, yaml.safe_load((out / "recipe.yaml").read_text())) == [
        "seed (0 there, 3 here)", "model.overrides.dropout (None there, 0.2 here)", "data.datasets.1.weight (1.0 there, 2.0 here)",
    ]
    with pytest.raises(RecipeError, match=r"r.yaml: .* differs in what a resume depends on: seed \(0 there, 3 here\); model"):
        should_resume(changed, "r.yaml")


def test_archive_renames_an_earlier_run_and_leaves_a_directory_without_one(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / ".tmp-step00000002").mkdir()  # a partial checkpoint is not a run
    assert archive(out) is None and out.is_dir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    kept = archive(out)
    assert kept.parent == tmp_path and kept.name.startswith("run.") and (kept / "metrics.jsonl").is_file()
    assert not out.exists()


# --- a failed save, a damaged checkpoint ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def twice(workspace):
    """The same 2-rank command run twice, no flag: the second resumes the first at its last step."""
    out = workspace / "runs" / "faults" / "twice"
    first = train(out, workspace)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    before = {p.relative_to(out): p.read_bytes() for p in sorted((out / "checkpoints").rglob("*")) if p.is_file()}
    metrics = (out / "metrics.jsonl").read_text()
    second = train(out, workspace)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return out, before, metrics, second


def test_the_same_command_run_twice_resumes_and_deletes_nothing(twice):
    out, before, metrics, second = twice
    assert f"resuming at step {STEPS}" in second.stdout
    after = {p.relative_to(out): p.read_bytes() for p in sorted((out / "checkpoints").rglob("*")) if p.is_file()}
    assert after == before and (out / "metrics.jsonl").read_text() == metrics
    assert logged_steps(out) == list(range(1, STEPS + 1))
    assert not (out / LOCK).exists()  # released at the end


class Engine:
    """DeepSpeed's engine, world size 1, its file writes made to fail on a full disk where asked."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.loaded = []

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        folder = Path(save_dir) / tag
        folder.mkdir(parents=True)
        (folder / "mp_rank_00_model_states.pt").write_bytes(b"half")
        if self.fail:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt"))
        torch.save(client_state, folder / "mp_rank_00_model_states.pt")

    def load_checkpoint(self, load_dir, tag):
        self.loaded.append(tag)
        return load_dir, torch.load(Path(load_dir) / tag / "mp_rank_00_model_states.pt")


def test_a_failed_save_leaves_latest_and_a_damaged_latest_falls_back(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(checkpoint.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(checkpoint.dist, "is_initialized", lambda: False)
    ckpt = tmp_path / "checkpoints"
    save_checkpoint(Engine(), ckpt, 2, {"step": 2}, keep=3)
    save_checkpoint(Engine(), ckpt, 4, {"step": 4}, keep=3)
    with pytest.raises(CheckpointSaveFailed, match=rf"\.tmp-step00000006: .* No space left on device.*'latest' still names {tag(4)}"):
        save_checkpoint(Engine(fail=True), ckpt, 6, {"step": 6}, keep=3)
    assert (ckpt / LATEST).read_text() == tag(4) and sorted(saved_steps(ckpt)) == [2, 4]
    assert not list(ckpt.glob(".tmp-*"))
    engine = Engine()
    assert load_latest(engine, ckpt) == {"step": 4}

    state = ckpt / tag(4) / "mp_rank_00_model_states.pt"
    state.write_bytes(state.read_bytes()[:40])  # a complete checkpoint, its file cut short afterwards
    engine = Engine()
    assert load_latest(engine, ckpt) == {"step": 2} and engine.loaded == [tag(4), tag(2)]
    assert f"{ckpt / tag(4)} could not be loaded" in capsys.readouterr().out
