"""The target mix at each training step, identical in the loader workers and in the trainer.

    target(step) = normalise(base(step) * factors(step))

`base` is the strategy's mix: dataset weights, sizes at a temperature, or the
newest loss-aware mix in force at that step, as the trainer's `Balancer`
computed it (unimodal/data/mix/balancer.py) and published it on the loader's
`MixBoard` (unimodal/data/mix/board.py). `factors` come from the recipe's
schedule and ramps (`SamplingConfig.factors`), a pure function of the step.
"""

from __future__ import annotations

import numpy as np

from unimodal.config import Recipe, SamplingConfig, expand_shards
from unimodal.data.index import shard_samples
from unimodal.data.mix.board import MixBoard


def dataset_sizes(recipe: Recipe) -> list[int | None]:
    """Samples per dataset from the index.json beside its shards; None where unknown."""
    counts = [shard_samples(expand_shards(ds.shards)) for ds in recipe.data.datasets]
    return [None if c is None else sum(c) for c in counts]


def prior_mix(recipe: Recipe) -> np.ndarray:
    """The strategy's starting mix: weights, or sizes^(1/T) when a temperature is set."""
    s = recipe.data.sampling
    if s.temperature is None:
        w = np.array([ds.weight for ds in recipe.data.datasets], dtype=np.float64)
    else:  # sizes were checked by load_recipe
        w = np.array(dataset_sizes(recipe), dtype=np.float64) ** (1.0 / s.temperature)
    return w / w.sum()


def bounded(p: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The mix clip(c * p, lo, hi) that sums to 1: the shares keep their order, the bounds hold.

    The sum grows with c, so c is found by bisection (p > 0; n * lo <= 1 <= n * hi).
    """
    below, above = 0.0, 1.0
    while np.clip(above * p, lo, hi).sum() < 1:
        above *= 2
    for _ in range(100):
        mid = (below + above) / 2
        below, above = (mid, above) if np.clip(mid * p, lo, hi).sum() < 1 else (below, mid)
    out = np.clip(above * p, lo, hi)
    return out / out.sum()


def loss_aware_mix(prior: np.ndarray, previous: np.ndarray, current: np.ndarray, s: SamplingConfig) -> np.ndarray:
    """More of the tasks whose loss fell least over the last window (Dynamic Weight Average, Liu et al. 2019).

    r_i = current_i / previous_i (mean loss per task in two consecutive windows;
    1 where a window saw none of the task); p_i ~ prior_i * exp((r_i - 1) / loss_temperature),
    then bounded to [min_weight, max_weight].
    """
    known = np.isfinite(previous) & np.isfinite(current) & (previous > 0)
    ratio = np.where(known, current / np.where(known, previous, 1.0), 1.0)
    logits = np.log(prior) + (ratio - 1) / s.loss_temperature
    p = np.exp(logits - logits.max())
    return bounded(p / p.sum(), s.min_weight, s.max_weight)


class MixPolicy:
    """target(step): the mix that batches of that step are drawn from."""

    def __init__(self, recipe: Recipe, board: MixBoard | None = None):
        self.sampling = recipe.data.sampling
        self.names = [ds.name for ds in recipe.data.datasets]
        self.prior = prior_mix(recipe)
        self.board = board

    def target(self, step: int) -> np.ndarray:
        base = self.board.mix_at(step) if self.board is not None else None
        p = (self.prior if base is None else base) * np.array(self.sampling.factors(self.names, step))
        return p / p.sum()
