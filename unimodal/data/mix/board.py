"""Loss-aware mixes on their way from the trainer to its loader workers, in shared memory.

Loss-aware mixes are computed by the trainer from the all-reduced per-task
losses (unimodal/data/mix/balancer.py) and reach the workers through a `MixBoard`,
a small shared-memory tensor made before the workers start. Each mix carries
the step it applies from, at least `lag` steps after the step that made it:
`lag` covers every batch the workers may already have built (prefetch_factor x
workers + 1 batches), so no batch is ever built before its mix is known, and the
mix a batch gets depends on the step alone, not on timing. A worker still
checks: it waits for the trainer to declare a step's mix final before using it.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch


class MixBoard:
    """Loss-aware mixes passed from the trainer to its loader workers, in shared memory.

    Row 0 holds the last step whose mix is final (inf until a trainer attaches:
    a loader used alone keeps the prior); each further row holds a mix and the
    step it applies from (inf while empty or being written). The rows form a
    ring big enough for every mix a worker may still need.
    """

    def __init__(self, n_datasets: int, lag: int, update_every: int):
        self.lag = lag
        rows = math.ceil(lag / update_every) + 3
        self.table = torch.full((rows + 1, n_datasets + 1), math.inf, dtype=torch.float64).share_memory_()
        self.published = 0  # trainer side only

    def publish(self, apply_from: int, probs: np.ndarray) -> None:
        row = self.table[1 + self.published % (len(self.table) - 1)]
        row[0] = math.inf  # readers skip the row while it changes
        row[1:] = torch.from_numpy(probs)
        row[0] = apply_from
        self.published += 1

    def finalise(self, steps_done: int) -> None:
        """The trainer has done `steps_done` steps: later mixes apply from steps_done + 1 + lag on."""
        self.table[0, 0] = steps_done + self.lag

    def mix_at(self, step: int) -> np.ndarray | None:
        """The newest mix published for `step` or earlier; None before the first."""
        while self.table[0, 0].item() < step:  # never met when lag covers the prefetched batches
            time.sleep(0.001)
        table = self.table[1:].numpy().copy()
        live = table[:, 0] <= step
        if not live.any():
            return None
        return table[np.flatnonzero(live)[np.argmax(table[live, 0])], 1:]
