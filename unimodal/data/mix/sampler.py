"""Task mixing: which dataset the next sample comes from, given the target mix.

Draw i looks up u_i = frac(u_0 + i / phi) in the cumulative target
probabilities: a golden-ratio Weyl sequence, the most evenly spread sequence
of its kind. Independent uniform draws would miss a share of 0.3 by about
0.0035 (one standard deviation) over 20,000 samples; this sequence misses by
O(log n / n), so each batch, and every window of the logs, holds close to the
target mix.

The draws are keyed by the global micro-batch, not by the loader worker: the
k-th draw of micro-batch J (J = step x ranks x accumulation + micro-step x
ranks + rank: the same numbering on any topology with the same global batch)
is draw J x STRIDE + k of one sequence whose u_0 comes from the seed. So a
micro-batch's tasks are a pure function of (seed, J, k, target): a resumed
run draws the tasks an uninterrupted one would, on the same topology or on
another (how many draws a batch takes depends on its samples' sizes).
"""

from __future__ import annotations

import numpy as np

from unimodal.data.stream import stream_seed

GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / phi, in 64-bit fixed point: the sequence stays exact for any draw count
MASK = (1 << 64) - 1


def cumulative(probs: np.ndarray) -> np.ndarray:
    """Cumulative shares that end at exactly 1.0, from the last task with a positive share on."""
    cum = np.cumsum(probs, dtype=np.float64)
    cum /= cum[-1]
    cum[np.flatnonzero(probs)[-1] :] = 1.0  # rounding must never hand a draw to a task at 0
    return cum


class TaskSampler:
    """Dataset indices along a golden-ratio Weyl sequence, spread by the cumulative target mix."""

    def __init__(self, seed: int, draws: int = 0):
        self.start = int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0])
        self.draws = draws

    def draw(self, cum: np.ndarray) -> int:
        """The next dataset for the target mix `cum` (from `cumulative`)."""
        u = (((self.start + self.draws * GOLDEN) & MASK) >> 11) / (1 << 53)  # in [0, 1), exact
        self.draws += 1
        return int(np.searchsorted(cum, u, side="right"))


STRIDE = 1 << 20  # draws set aside for each micro-batch: far more than one ever takes


def micro_sampler(seed: int, micro: int) -> TaskSampler:
    """The sampler of global micro-batch `micro`: its draws are `micro * STRIDE` onwards in the run's sequence."""
    return TaskSampler(stream_seed(seed, 1 << 20), micro * STRIDE)
