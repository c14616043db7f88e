"""A training process's random state, for its checkpoint.

Dropout draws from torch's generator (and the accelerator's on a GPU); Python's
and NumPy's are saved too, for whatever a model or objective may draw. Loader
workers use none of these: every draw they make comes from a generator seeded
by the sample or kept in the loader position (unimodal/data/loader.py), so the
position is their random state. The state is plain lists and tensors, so a
checkpoint holds no pickled NumPy objects.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from deepspeed.accelerator import get_accelerator


class RNGState:
    """This process's random generators, as a stateful part of the checkpoint (unimodal/train/state.py)."""

    def state_dict(self) -> dict[str, Any]:
        version, words, gauss = random.getstate()
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "python": [version, list(words), gauss],
            "numpy": [name, keys.tolist(), pos, has_gauss, cached],
            "torch": torch.get_rng_state(),
        }
        if get_accelerator().device_name() != "cpu":
            state["accelerator"] = get_accelerator().get_rng_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, words, gauss = state["python"]
        random.setstate((version, tuple(words), gauss))
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if "accelerator" in state:
            get_accelerator().set_rng_state(state["accelerator"])


@contextmanager
def untouched() -> Iterator[None]:
    """Work whose random draws training must not see (validation): the generators are as before it, after it."""
    saved = RNGState().state_dict()
    try:
        yield
    finally:
        RNGState().load_state_dict(saved)
