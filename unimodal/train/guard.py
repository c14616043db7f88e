"""What every rank must agree on before a backward pass: skip this batch, and stop after this step?

A batch whose loss is NaN or inf on any rank is skipped on all of them before
its backward pass, so DeepSpeed never sees it: no gradient, no optimiser
step, whatever the ZeRO stage or accumulation; the next batch takes its place.
Past `train.max_nonfinite_steps` skips the run stops with `NonFiniteLoss`.

SIGTERM and SIGUSR1 (what SLURM and Kubernetes send before preemption) only
set a flag: a signal may reach one rank, all of them, or arrive mid-collective.
Both answers travel in one two-number all_reduce per batch, the flag of the
loss computed on the device and read back once with the stop flag: the one
host synchronisation a step keeps outside DeepSpeed, as the decision needs
it before the backward pass. The loop then finishes its step, saves a
checkpoint and exits cleanly. `stopping`, in
shared memory, tells this rank's loader workers that the signal they may have
got too (SLURM signals every process of a job) is one their trainer saves on
(unimodal/data/worker_signals.py).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import signal

import torch
import torch.distributed as dist

from unimodal.train.comm import all_reduce_sum

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class NonFiniteLoss(RuntimeError):
    """More batches had a non-finite loss than `train.max_nonfinite_steps` allows."""


class StepGuard:
    def __init__(self, recipe_name: str, limit: int, skipped: int = 0):
        self.recipe_name, self.limit, self.skipped = recipe_name, limit, skipped
        self.received = False  # a stop signal reached this rank
        self.stopping = multiprocessing.RawValue(ctypes.c_bool, False)  # the same, for the loader workers
        self.stop = False  # one reached some rank: agreed by all
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._note)

    def _note(self, _signum: int, _frame) -> None:
        self.received = True
        self.stopping.value = True

    def skip(self, loss: torch.Tensor, step: int) -> bool:
        """True when some rank's `loss` is not finite (then all ranks skip the batch); notes a stop request."""
        flags = torch.stack([~torch.isfinite(loss.detach()), loss.new_full((), self.received, dtype=torch.bool)])
        bad, stop = all_reduce_sum(flags.double()).tolist()  # the step's one wait on the device: a decision
        self.stop = self.stop or stop > 0
        if not bad:
            return False
        self.skipped += 1
        if self.skipped > self.limit:
            raise NonFiniteLoss(
                f"{self.recipe_name}: step {step}: the loss was NaN or inf in {self.skipped} batches, over "
                f"train.max_nonfinite_steps={self.limit}; lower train.lr, lengthen train.warmup_steps, set "
                "deepspeed.gradient_clipping, or check the data"
            )
        if dist.get_rank() == 0:
            print(
                f"[unimodal] step {step}: non-finite loss on some rank, batch skipped ({self.skipped} so far)",
                flush=True,
            )
        return True
