"""Shared fixtures: a small demo workspace (real shards and a trained tokenizer).

Recipes use paths relative to the working directory, as in the repo root, so
tests that run recipes `chdir` into this workspace.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "smoke"
TINY_STEPS, TINY_EVERY = 16, 8  # `tiny_run`'s length and checkpoint interval
# torch.compile's kernels (tests/test_attention.py: flex and the compiled run) persist here, for this
# process and the `unimodal` runs it starts: a rerun on this machine compiles nothing
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "unimodal-tests" / "inductor"))


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """data/demo (a tenth of the demo's size) and runs/demo/tokenizer/sp.model.

    DTMF tones only (speech=False): the same shards on every machine, espeak-ng or not, so
    the tests that train or evaluate on the audio see the same samples everywhere."""
    from unimodal.demo.mixture import write_demo
    from unimodal.tokenize.text import shard_texts, train_text_tokenizer

    root = tmp_path_factory.mktemp("workspace")
    write_demo(root / "data" / "demo", scale=0.1, seed=0, speech=False)
    shards = [str(p) for p in sorted((root / "data" / "demo" / "train").glob("*.tar"))]
    train_text_tokenizer(shard_texts(shards), root / "runs" / "demo" / "tokenizer", vocab_size=256)
    return root


@pytest.fixture(scope="session")
def tiny_run(workspace) -> Path:
    """A finished 2-rank ZeRO-2 run of the smoke stage 1: 16 steps (enough to see it learn), a record each,
    TensorBoard and wandb (offline) on, checkpoints at steps 8 and 16.

    One run serves every test that reads a finished run (tests/test_train.py, test_export.py,
    test_report.py, and test_attention.py's compiled run, which repeats its first 4 steps: the LR is still
    in its warmup there, the same whatever the stage's length)."""
    sets = [
        f"train.steps={TINY_STEPS}",
        f"train.checkpoint_every={TINY_EVERY}",
        "logging.every=1",
        "logging.tensorboard=true",
        "data.workers=0",
    ]
    return train_stage1(workspace, workspace / "runs" / "tiny", sets)


def train_stage1(workspace: Path, out: Path, sets: list[str]) -> Path:
    """`out`: a finished 2-rank run of the smoke stage 1 with the `--set` values `sets`."""
    sets = [*sets, f"train.output_dir={out}"]
    result = unimodal(
        "train", str(SMOKE / "stage1.yaml"), "--nproc", "2", *[a for s in sets for a in ("--set", s)], cwd=workspace
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.fixture
def one_thread():
    """Tiny ops run faster on one thread, and many times faster when other jobs share the CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def in_workspace(workspace, monkeypatch) -> Path:
    monkeypatch.chdir(workspace)
    return workspace


def unimodal_env() -> dict[str, str]:
    """The environment tests run the `unimodal` command in: CPU, wandb offline and quiet, one thread a
    process (as torchrun sets it): two ranks of two threads each on a 2-core machine spend much of
    their time waiting on each other's threads."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", WANDB_SILENT="true", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("WANDB_API_KEY", None)
    return env


def unimodal(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the `unimodal` command as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "unimodal.cli", *args],
        cwd=cwd,
        env=unimodal_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class PlantsAFile:
    """Unpickling this creates a file: what a hostile checkpoint file could do instead."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))
