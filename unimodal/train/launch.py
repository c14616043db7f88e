"""`unimodal train RECIPE --nproc N`: validate here, then start N ranks on this machine.

Validation happens in this process, before any rank starts, so a broken
recipe fails in a second with a message naming the file and the field; so
does a stage whose output directory another run holds (its lock) or holds a
checkpoint of another run (unimodal/train/resume.py). The lock is held here
for the whole stage.
On a machine without CUDA, DeepSpeed's CPU accelerator and gloo are used.

The ranks are started here, with the environment `deepspeed.init_distributed`
reads (as DeepSpeed's and torch's launchers do), rather than through
DeepSpeed's launcher: that one answers SIGTERM by terminating every process
under it and exiting 1, and dies of SIGUSR1. Here SIGTERM and SIGUSR1 are
passed on to the ranks, which save a checkpoint and exit 0 (a clean stop, not
a failure); when a rank fails, the others, left waiting in a collective, are killed;
when the launcher itself is killed, the ranks are sent SIGTERM.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from unimodal.recipe import load_recipe


class StageFailed(RuntimeError):
    """The ranks of a stage exited with an error (their output says why)."""


class StageStopped(Exception):
    """A stage's ranks saved a checkpoint and exited on SIGTERM/SIGUSR1 before its last step."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(recipe_path: str | Path, overrides: list[str]) -> list[str]:
    """What every rank runs: it resumes from the stage's checkpoint if there is one."""
    cmd = [sys.executable, "-u", "-m", "unimodal.train", str(recipe_path)]
    for item in overrides:
        cmd += ["--set", item]
    return cmd


def launch_env() -> dict[str, str]:
    """This environment, with this Python's bin folder first on PATH.

    DeepSpeed JIT-builds its CPU all-reduce op with whichever `ninja` PATH finds
    first; two ninja versions (the environment's and the system's) do not read
    each other's build logs, so the op was rebuilt (~30 s) whenever runs
    alternated between them.
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    return env


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def stop_when_the_launcher_dies(launcher: int) -> None:
    """In a rank, before it runs: SIGTERM when the launcher dies, even by SIGKILL (Linux).

    The ranks then save a checkpoint and exit, as on any stop signal, instead of
    living on as orphans that hold their devices and the job's port.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != launcher:  # it died before the request was made
            os.kill(os.getpid(), signal.SIGTERM)


def run_ranks(cmd: list[str], nproc: int) -> int:
    """Run `cmd` as ranks 0..nproc-1 of one job; their exit status (the first failure's, else 0)."""
    port = free_port()
    env = launch_env() | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(nproc)}
    orphan_guard = functools.partial(stop_when_the_launcher_dies, os.getpid())
    ranks = [
        subprocess.Popen(cmd, env=env | {"RANK": str(r), "LOCAL_RANK": str(r)}, preexec_fn=orphan_guard)
        for r in range(nproc)
    ]

    def forward(signum: int, _frame) -> None:
        for rank in ranks:
            if rank.poll() is None:
                rank.send_signal(signum)

    before = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        while True:
            codes = [rank.poll() for rank in ranks]
            failed = [code for code in codes if code]
            if failed:
                for rank in ranks:
                    if rank.poll() is None:
                        rank.kill()
                    rank.wait()
                return failed[0]
            if all(code == 0 for code in codes):
                return 0
            time.sleep(0.2)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        remove_shm_buffers("127.0.0.1", port)


def remove_shm_buffers(addr: str, port: int) -> None:
    """Unlink the job's DeepSpeed CPU all-reduce buffers, which a killed rank leaves in /dev/shm.

    Each rank of a CPU job creates /dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>
    (megabytes each) and unlinks it only on a clean exit: left behind by every
    crashed or killed rank, they fill the machine's memory run after run.
    """
    for path in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_*"):
        path.unlink(missing_ok=True)


def run_stage(recipe_path: str | Path, nproc: int, overrides: list[str], fresh: bool = False) -> None:
    """Validate, lock the output directory, then run one stage on `nproc` local ranks; raises if the ranks fail.

    The stage resumes from its checkpoint if it has one; `fresh` moves an earlier run aside and starts over.
    """
    from unimodal.train.elastic import convert, plan  # these import deepspeed: not for every `unimodal` command
    from unimodal.train.lock import release
    from unimodal.train.resume import claim, should_resume
    from unimodal.train.start import check_start

    recipe = load_recipe(recipe_path, overrides)
    if fresh or not should_resume(recipe, str(recipe_path)):  # nothing written yet
        check_start(recipe, nproc, str(recipe_path))
    else:  # on another topology: refused or converted here, before any rank starts
        ckpt_dir = recipe.train.output_dir / "checkpoints"
        reshape = plan(recipe, nproc, ckpt_dir, str(recipe_path))
        if reshape.universal:
            print(f"[unimodal] {reshape.note}; converting {ckpt_dir / reshape.universal}", flush=True)
            convert(ckpt_dir, reshape.universal)
    claim(recipe, not fresh, os.getpid(), str(recipe_path))
    try:
        code = run_ranks(launch_command(recipe_path, overrides), nproc)
    finally:
        release(recipe.train.output_dir, os.getpid())
    if code != 0:
        raise StageFailed(f"{recipe_path}: training exited with status {code}")
