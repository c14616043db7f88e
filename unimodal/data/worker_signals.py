"""Loader workers and stop signals: a worker must outlive the signal until its trainer has saved."""

from __future__ import annotations

import functools
import os
import signal
import time

STOP_GRACE = 30  # s a worker serves on after a stop signal its trainer saves on: SLURM's default KillWait
STOP_WAIT = 1.0  # s a worker hit by SIGTERM waits to learn whether its trainer was hit too


def serve_through_a_stop(stopping, _worker: int) -> None:
    """A stop signal must not end a worker before its trainer has saved a checkpoint.

    The trainer, told by the same signal, finishes its step, saves (the loader's
    position included) and then ends its workers (unimodal/train/guard.py); a
    worker that died first would fail that step. So a worker leaves the job's
    process group (a signal to the group passes it by) and ignores SIGUSR1; a
    SIGTERM sent to it directly, as SLURM sends one to every process of a job,
    ends it at once unless its trainer (`stopping`, shared memory) says within
    STOP_WAIT that it got one too: then it serves on, for STOP_GRACE at most.
    The DataLoader's shutdown and multiprocessing's at interpreter exit end
    workers with SIGTERM too: those still end them (a worker that ignored
    SIGTERM outright kept exiting processes waiting for it forever).
    """
    os.setpgrp()
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if stopping is not None:
        signal.signal(signal.SIGTERM, functools.partial(_on_sigterm, stopping))


def _on_sigterm(stopping, _signum: int, _frame) -> None:
    deadline = time.monotonic() + STOP_WAIT
    while not stopping.value and time.monotonic() < deadline:
        time.sleep(0.01)
    if stopping.value:
        signal.alarm(STOP_GRACE)  # SIGALRM's default action ends the worker then, at the latest
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
