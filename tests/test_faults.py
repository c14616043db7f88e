"""Faults a cluster job meets, survived with nothing lost.

A rank killed under torchrun's restarts, a job run again (with and without
--fresh), two runs on one output directory, a hung rank, a failed save and a
damaged checkpoint. Multi-rank runs are few and each serves several checks.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import SMOKE, unimodal_env
from test_resume import descendants, deterministic, logged_steps

from unimodal.config import RecipeError
from unimodal.recipe import load_recipe
from unimodal.train import checkpoint
from unimodal.train.checkpoint import LATEST, CheckpointSaveFailed, load_latest, save_checkpoint, saved_steps, tag
from unimodal.train.lock import LOCK, OutputDirLocked, acquire, release
from unimodal.train.resume import archive, recipe_differences, should_resume

STEPS, EVERY = 4, 2
SETS = [f"train.steps={STEPS}", f"train.checkpoint_every={EVERY}", "logging.every=1", "logging.wandb.mode=disabled"]


def set_args(out: Path, *extra: str) -> list[str]:
    return [a for s in [*SETS, *extra, f"train.output_dir={out}"] for a in ("--set", s)]


def env() -> dict[str, str]:
    """One thread a rank, as torchrun sets it: the same sums in the same order, so runs under either launcher compare."""
    return unimodal_env() | {"OMP_NUM_THREADS": "1"}


def train_command(out: Path, *flags: str, sets: tuple[str, ...] = ()) -> list[str]:
    """`unimodal train` of the smoke stage 1 on 2 ranks into `out`."""
    return [sys.executable, "-m", "unimodal.cli", "train", str(SMOKE / "stage1.yaml"), "--nproc", "2",
            *set_args(out, *sets), *flags]  # fmt: skip


def train(out: Path, cwd: Path, *flags: str, sets: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = train_command(out, *flags, sets=sets)
    return subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=600)


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
        with pytest.raises(
            OutputDirLocked,
            match=rf"{out} is being written by another run \(pid {holder.pid} on {socket.gethostname()}",
        ):
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
    assert should_resume(
        recipe_at(out, "train.steps=600", "logging.every=5", "train.checkpoint_every=7", "train.lr=1e-4"), "r.yaml"
    )
    changed = recipe_at(out, "seed=3", "model.overrides.dropout=0.2", "data.datasets.1.weight=2.0")
    assert recipe_differences(changed, yaml.safe_load((out / "recipe.yaml").read_text())) == [
        "seed (0 there, 3 here)",
        "model.overrides.dropout (None there, 0.2 here)",
        "data.datasets.1.weight (1.0 there, 2.0 here)",
    ]
    with pytest.raises(
        RecipeError, match=r"r.yaml: .* differs in what a resume depends on: seed \(0 there, 3 here\); model"
    ):
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


def run_files(out: Path) -> dict[Path, bytes]:
    return {
        p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and "wandb" not in p.parts
    }


@pytest.fixture(scope="module")
def first(workspace) -> tuple[Path, list[dict]]:
    """A 2-rank run of the smoke stage 1 and its deterministic metrics: the uninterrupted reference."""
    out = workspace / "runs" / "faults" / "twice"
    result = train(out, workspace)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, deterministic(out)


def test_run_again_resumes_deleting_nothing_and_a_locked_directory_is_refused(first, workspace):
    out, reference = first
    before = run_files(out)
    again = train(out, workspace)  # the same command, no flag: a resubmitted job
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming at step {STEPS}" in again.stdout
    after = run_files(out)
    assert {p: after.get(p) for p in before if p.name not in ("done.json", "recipe.yaml")} == {
        p: b for p, b in before.items() if p.name not in ("done.json", "recipe.yaml")
    }  # nothing deleted or changed but the run's record of itself
    assert deterministic(out) == reference and not (out / LOCK).exists()

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        acquire(out, 900, holder.pid)
        before = run_files(out)
        refused = train(out, workspace, "--fresh")
        assert refused.returncode == 2 and f"is being written by another run (pid {holder.pid}" in refused.stderr
        assert run_files(out) == before and not list(out.parent.glob("twice.*"))  # refused before anything was written
    finally:
        holder.kill()
        holder.wait()


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
            raise OSError(
                errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
            )
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
    with pytest.raises(
        CheckpointSaveFailed, match=rf"\.tmp-step00000006: .* No space left on device.*'latest' still names {tag(4)}"
    ):
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


# --- a rank killed under torchrun; a rank stopped -------------------------------------------------------------


def rank_pids(launcher: int) -> dict[int, int]:
    """{rank: pid} of the ranks under `launcher` (torchrun's agent or `unimodal train`)."""
    ranks = {}
    for pid in descendants(launcher):
        try:
            env = dict(
                item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item
            )
            cmdline = Path(f"/proc/{pid}/cmdline").read_text()
        except OSError:
            continue
        if "unimodal.train" in cmdline and "RANK" in env:
            ranks.setdefault(int(env["RANK"]), pid)  # the rank itself, not its loader workers: the first found
    return ranks


def start(cmd: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        cmd, cwd=cwd, env=env(), stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_for(ready, run: subprocess.Popen, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert run.poll() is None, f"the run ended (status {run.returncode}) before the moment for the fault"
        assert time.monotonic() < deadline, "timed out waiting for the moment for the fault"
        time.sleep(0.05)


def test_a_rank_killed_under_torchrun_restarts_falls_back_from_a_damaged_latest_and_gives_the_uninterrupted_losses(
    first, workspace
):
    out = workspace / "runs" / "faults" / "torchrun"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "1",
        "-m",
        "unimodal.train",
        str(SMOKE / "stage1.yaml"),
        *set_args(out, "train.checkpoint_every=1"),
    ]
    run = start(cmd, workspace, out.with_suffix(".log"))
    ckpt = out / "checkpoints"
    try:
        wait_for(lambda: (ckpt / LATEST).is_file() and (ckpt / LATEST).read_text() == tag(2), run)
        first_round = [run.pid, *descendants(run.pid)]
        os.kill(rank_pids(run.pid)[1], signal.SIGKILL)
        latest = ckpt / (ckpt / LATEST).read_text()  # complete; now cut short, as a disk fault would leave it
        state = latest / "mp_rank_00_model_states.pt"
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
        assert run.wait(timeout=400) == 0, out.with_suffix(".log").read_text()[-4000:]
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    log = out.with_suffix(".log").read_text()
    assert f"{latest} could not be loaded" in log, log[-4000:]
    resumed = int(latest.name[4:]) - 1  # the checkpoint before it
    assert f"resuming at step {resumed}" in log, log[-4000:]
    assert deterministic(out) == first[1]  # every step to the last, each loss bit for bit
    deadline = time.monotonic() + 60
    while [
        p
        for p in first_round
        if Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
    ]:
        assert time.monotonic() < deadline, "processes of the first round (ranks, loader workers) outlived the job"
        time.sleep(0.5)


def test_fresh_keeps_the_earlier_run_and_a_stopped_rank_ends_the_job_within_the_collective_timeout(first, workspace):
    out, reference = first
    timeout_s = 20
    cmd = train_command(out, "--fresh", sets=(f"train.collective_timeout_s={timeout_s}", "train.steps=1000"))
    run = start(cmd, workspace, out.parent / "stopped.log")
    try:
        wait_for(lambda: list(out.parent.glob("twice.*")) and 2 in logged_steps(out), run)  # the new run's step 2
        os.kill(rank_pids(run.pid)[1], signal.SIGSTOP)
        stopped = time.monotonic()
        code = run.wait(timeout=timeout_s + 120)
        waited = time.monotonic() - stopped
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    log = (out.parent / "stopped.log").read_text()
    [kept] = out.parent.glob("twice.*")  # the earlier run, whole
    assert (
        f"kept as {kept}" in log
        and deterministic(kept) == reference
        and sorted(saved_steps(kept / "checkpoints")) == [2, 4]
    )
    assert code == 1 and waited < timeout_s + 60, (code, waited, log[-3000:])
    assert re.search(
        rf"error: rank 0: \w+ after step \d+ failed or waited over train.collective_timeout_s={timeout_s} s", log
    ), log[-3000:]
