"""A 2-rank CPU run stopped at any moment goes on, with `--resume`, exactly as if never stopped.

Runs are started as a user starts them, `unimodal train ... --nproc 2`, in a
session of their own, so that a kill reaches the whole process group: the
launcher, both ranks and their loader workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SMOKE, unimodal, unimodal_env

from unimodal.train.checkpoint import LATEST, PARTIAL, tag

STEPS, EVERY = 9, 3
SETS = [
    f"train.steps={STEPS}",
    f"train.checkpoint_every={EVERY}",
    "logging.wandb.mode=disabled",
    "logging.every=2",  # the checkpoint at step 3 falls inside a logging window: it must carry the window's sums
    "model.overrides.dropout=0.1",  # the trainer's RNG state matters
    "logging.sample_log=true",  # each rank's samples, step by step
]
# validation at each checkpoint's step, redone after the resume, training unchanged (the SIGKILL test only):
# 18 samples, a batch of 16 on rank 0 and of 2 on rank 1
VALIDATE = ["--set", f"train.eval_every={EVERY}", "--set", "train.eval_samples=18"]
TIMING = {"tokens_per_s", "samples_per_s", "data_wait_s", "tflops_per_s", "mfu", "peak_memory_mib"}


def train_args(out, *extra: str) -> list[str]:
    sets = [*SETS, f"train.output_dir={out}"]
    return ["train", str(SMOKE / "stage1.yaml"), "--nproc", "2", *[a for s in sets for a in ("--set", s)], *extra]


def start(out, cwd, *extra: str) -> subprocess.Popen:
    """A run in its own process group, its output in `out`.log."""
    out.parent.mkdir(parents=True, exist_ok=True)
    log = open(out.with_suffix(".log"), "w")  # noqa: SIM115 (the run writes to it after we return)
    cmd = [sys.executable, "-m", "unimodal.cli", *train_args(out, *extra)]
    return subprocess.Popen(
        cmd, cwd=cwd, env=unimodal_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_for(ready, run: subprocess.Popen, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert run.poll() is None, f"the run ended (status {run.returncode}) before the moment to stop it"
        assert time.monotonic() < deadline, "timed out waiting for the moment to stop the run"
        time.sleep(0.002)


def shm_buffers() -> set[Path]:
    """DeepSpeed's CPU all-reduce buffers in /dev/shm (see unimodal.train.launch.remove_shm_buffers)."""
    return set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"))


def deterministic(out) -> list[dict]:
    """metrics.jsonl without the timing fields."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def logged_steps(out) -> list[int]:
    path = out / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.fixture(scope="module")
def uninterrupted(workspace):
    out = workspace / "runs" / "resume-test" / "uninterrupted"
    result = unimodal(*train_args(out, *VALIDATE), cwd=workspace)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_sigkill_while_saving_then_resume_gives_the_uninterrupted_losses(uninterrupted, workspace):
    out = workspace / "runs" / "resume-test" / "killed"
    ckpt = out / "checkpoints"
    buffers_before = shm_buffers()
    run = start(out, workspace, *VALIDATE)
    wait_for(lambda: (ckpt / f"{PARTIAL}{tag(2 * EVERY)}").is_dir(), run)
    os.killpg(run.pid, signal.SIGKILL)  # the step-6 checkpoint is being written
    run.wait()
    for path in shm_buffers() - buffers_before:  # the killed launcher could not unlink its ranks' buffers
        path.unlink(missing_ok=True)
    assert (ckpt / LATEST).read_text() == tag(EVERY)  # the last complete one

    result = unimodal(*train_args(out, *VALIDATE, "--resume"), cwd=workspace)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"resuming at step {EVERY}" in result.stdout
    assert deterministic(out) == deterministic(uninterrupted)  # every later step's loss, bit for bit
    val = [r for r in deterministic(out) if "loss" not in r]  # validation records, equal across the resume too
    assert [r["step"] for r in val] == [EVERY, 2 * EVERY, 3 * EVERY]
    assert {"val/digit-captions/loss", "val/digit-captions/exact_match", "val/number-words/loss"} <= set(val[0])
    for rank in (0, 1):  # the same samples at every step: none repeated or skipped across the resume
        name = f"samples/rank{rank}.jsonl"
        assert (out / name).read_text() == (uninterrupted / name).read_text(), name
    assert not list(ckpt.glob(PARTIAL + "*"))


def live_processes(pgid: int) -> list[int]:
    """Processes of process group `pgid` that have not exited (zombies aside)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def test_ranks_of_a_launcher_killed_with_sigkill_save_and_exit(workspace):
    out = workspace / "runs" / "resume-test" / "orphaned"
    run = start(out, workspace)
    wait_for(lambda: EVERY + 1 in logged_steps(out), run)
    run.kill()  # the launcher alone: its ranks are orphaned
    run.wait()
    deadline = time.monotonic() + 120
    while live_processes(run.pid):
        assert time.monotonic() < deadline, f"ranks still running: {live_processes(run.pid)}"
        time.sleep(0.2)
    log = out.with_suffix(".log").read_text()
    assert "stopped by a signal at step " in log, log[-3000:]
    saved = int(log.split("stopped by a signal at step ")[1].split(",")[0])
    assert (out / "checkpoints" / LATEST).read_text() == tag(saved)


def descendants(pid: int) -> list[int]:
    """Every live process under `pid`, at any depth (loader workers included, whatever their group)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def test_sigterm_to_every_process_of_the_job_saves_and_exits_cleanly(workspace):
    """What SLURM does at preemption or requeue: SIGTERM to every process of the job step, loader workers too.

    It covers a signal to the process group (launcher and ranks; the workers have left it) as well.
    """
    out = workspace / "runs" / "resume-test" / "slurm-stopped"
    run = start(out, workspace)
    wait_for(lambda: EVERY + 1 in logged_steps(out), run)
    everyone = [run.pid, *descendants(run.pid)]
    assert len(everyone) >= 5, everyone  # launcher, 2 ranks, a loader worker each
    for pid in everyone:
        os.kill(pid, signal.SIGTERM)
    assert run.wait(timeout=300) == 0, out.with_suffix(".log").read_text()[-3000:]
    log = out.with_suffix(".log").read_text()
    stopped = logged_steps(out)[-1]
    assert "stopped by a signal at step " in log and EVERY + 1 <= stopped < STEPS, log[-3000:]
    saved = int(log.split("stopped by a signal at step ")[1].split(",")[0])
    assert (out / "checkpoints" / LATEST).read_text() == tag(saved) and saved >= stopped
    assert not (out / "done.json").exists()
