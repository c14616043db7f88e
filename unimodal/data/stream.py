"""Raw sample streams over WebDataset shards, spelled out as pipeline stages.

Training reads each dataset as an endless stream (webdataset's resampled
mode: shards drawn with replacement), seeded per rank, worker and dataset, so
that every rank and worker sees its own deterministic order without any
coordination. Evaluation reads held-out shards once, in order.
Nothing is decoded here: samples stay bytes until `decode_example`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import webdataset as wds


def stream_seed(*parts: int) -> int:
    """A well-mixed 32-bit seed from (seed, rank, worker, dataset, ...)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def train_samples(urls: list[str], seed: int, shuffle_buffer: int) -> Iterator[dict[str, Any]]:
    stages = [
        wds.ResampledShards(urls, seed=seed, worker_seed=lambda: 0, deterministic=True),
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
    ]
    if shuffle_buffer:
        stages.append(wds.shuffle(shuffle_buffer, initial=shuffle_buffer, rng=random.Random(seed)))
    return iter(wds.DataPipeline(*stages))


def eval_samples(urls: list[str]) -> Iterator[dict[str, Any]]:
    return iter(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))
