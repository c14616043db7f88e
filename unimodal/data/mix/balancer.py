"""The trainer's side of task balancing: loss-aware updates, and the mix in the logs.

With `strategy: loss_aware` every rank sums its per-task losses; every
`update_every` steps the sums are all-reduced (with the trainer's all-reduce,
handed in: this package sits below the trainer), so all ranks compute the same
new mix and publish it on their own loader's MixBoard, to apply `lag` steps
later (unimodal/data/mix/board.py). The mixes that may still apply and the
partial sums are the balancer's state, in each checkpoint: a resumed run
restores them before its workers start, so its batches follow the mixes of the
run it continues, even where the losses themselves would not come out bit for
bit (GPU kernels).

Logged per task: `mix/<name>`, the share of samples trained in the window
(all ranks), next to `mix_target/<name>`, the target mix averaged over the
window's steps.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from unimodal.config import Recipe
from unimodal.data.mix.board import MixBoard
from unimodal.data.mix.policies import MixPolicy, loss_aware_mix


class Balancer:
    """The mix's trainer side on one rank; `board` is its loader's (None unless loss-aware).

    `all_reduce` sums a host tensor over all ranks, returning a new host tensor
    (unimodal/train/comm.py's `all_reduce_sum`).
    """

    def __init__(
        self,
        recipe: Recipe,
        board: MixBoard | None,
        steps_done: int,
        all_reduce: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device | str = "cpu",
    ):
        self.names = [ds.name for ds in recipe.data.datasets]
        self.sampling = recipe.data.sampling
        self.board, self.all_reduce, self.device = board, all_reduce, device
        self.policy = MixPolicy(recipe, self.board)
        n = len(self.names)
        # per task: loss sum, samples; since the last update. On the device: read back only when the mix is updated
        self.sums = torch.zeros(2 * n, dtype=torch.float64, device=device)
        self.previous = np.full(n, np.nan)  # per task: mean loss in the last update window that saw it
        self.live: list[tuple[int, list[float]]] = []  # (applies from step, mix): published, possibly still in force
        self.target_sum, self.target_steps = np.zeros(n), 0
        if self.board is not None:
            self.board.finalise(steps_done)

    def add(self, dataset: torch.Tensor, sample_loss: torch.Tensor) -> None:
        """One micro-batch's per-sample losses, by dataset index."""
        if self.board is None:
            return
        n = len(self.names)
        self.sums[:n].index_add_(0, dataset, sample_loss.detach().double())
        self.sums[n:].index_add_(0, dataset, torch.ones_like(sample_loss, dtype=torch.float64))

    def step(self, done: int) -> None:
        """After `done` optimiser steps: count the target of the step just trained; update the mix when due."""
        self.target_sum += self.policy.target(done - 1)
        self.target_steps += 1
        if self.board is None:
            return
        if done % self.sampling.update_every == 0:
            sums = self.all_reduce(self.sums)
            self.sums.zero_()
            n = len(self.names)
            loss, count = sums[:n].numpy(), sums[n:].numpy()
            mean = np.where(count > 0, loss / np.maximum(count, 1), np.nan)
            if np.isfinite(self.previous).any():
                self._publish(
                    done + self.board.lag, loss_aware_mix(self.policy.prior, self.previous, mean, self.sampling)
                )
            self.previous = np.where(count > 0, mean, self.previous)
        self.board.finalise(done)

    def _publish(self, apply_from: int, mix: np.ndarray) -> None:
        self.board.publish(apply_from, mix)
        self.live = (self.live + [(apply_from, mix.tolist())])[-(len(self.board.table) - 1) :]

    def record(self, window: dict) -> dict:
        """mix/<name> from the window record's samples/<name>, and mix_target/<name>; starts a new window."""
        samples = np.array([window.get(f"samples/{n}", 0) for n in self.names], dtype=np.float64)
        target = self.target_sum / max(1, self.target_steps)
        self.target_sum, self.target_steps = np.zeros(len(self.names)), 0
        rec = {f"mix/{n}": float(s) for n, s in zip(self.names, samples / max(1.0, samples.sum()))}
        rec.update({f"mix_target/{n}": float(p) for n, p in zip(self.names, target)})
        return rec

    def state_dict(self) -> dict:
        return {
            "sums": self.sums.tolist(),
            "previous": self.previous.tolist(),
            "live": self.live,
            "target_sum": self.target_sum.tolist(),  # the log window's, so a resumed run logs the same mix_target
            "target_steps": self.target_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        """A checkpoint's state, the mixes that may still apply republished: before the loader's workers start."""
        self.sums = torch.tensor(state["sums"], dtype=torch.float64, device=self.device)
        self.previous = np.array(state["previous"], dtype=np.float64)
        self.target_sum, self.target_steps = np.array(state["target_sum"]), int(state["target_steps"])
        for apply_from, mix in state["live"]:
            self._publish(apply_from, np.array(mix))

    @staticmethod
    def reshard(states: list[dict], rank: int) -> dict:
        """Saved on another topology: rank 0 holds the saved ranks' loss sums; the mixes, shared by all, to each."""
        return states[0] | {"sums": np.sum([s["sums"] for s in states], axis=0) * (rank == 0)}
