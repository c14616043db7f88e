"""Task mixing: which dataset the next sample comes from.

The draw is a pure function of (seed, number of draws so far), so the
sampler's whole state is one integer and a resumed run draws exactly the task
sequence an uninterrupted one would have.
"""

from __future__ import annotations

import numpy as np


class TaskSampler:
    """Draws dataset indices with probabilities proportional to the recipe's weights."""

    def __init__(self, weights: list[float], seed: int, draws: int = 0):
        w = np.asarray(weights, dtype=np.float64)
        self.probs = w / w.sum()
        self._cum = np.cumsum(self.probs)
        self._cum[-1] = 1.0
        self.rng = np.random.default_rng(seed)
        self.rng.random(draws)  # fast-forward: random(n) consumes exactly n draws
        self.draws = draws

    def __next__(self) -> int:
        self.draws += 1
        return int(np.searchsorted(self._cum, self.rng.random(), side="right"))
