"""The training loader: mixed-task, token-budget batches built in DataLoader workers.

Each worker owns one endless stream per dataset and a TaskSampler; it decodes,
tokenizes and collates, so the training process only receives ready tensors.
The worker's position (draws so far, raw samples consumed per dataset) is its
whole state: torchdata's StatefulDataLoader collects it per worker for the
checkpoint and hands it back on resume, and the worker fast-forwards its
streams to it. A resumed run therefore sees exactly the batches an
uninterrupted run would have seen (same recipe, ranks and workers).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader

from unimodal.config import Recipe, expand_shards
from unimodal.data.decode import BadSample, decode_example
from unimodal.data.mixing import TaskSampler
from unimodal.data.stream import stream_seed, train_samples
from unimodal.tokenize.multimodal import MultimodalTokenizer
from unimodal.tokenize.sequence import TokenSequence, collate
from unimodal.tokenize.text import BOS_ID

log = logging.getLogger(__name__)


def padded_tokens(seqs: list[TokenSequence]) -> int:
    """Tokens a padded batch of `seqs` computes: encoder plus decoder."""
    return len(seqs) * (max(s.enc_len for s in seqs) + max(s.dec_len for s in seqs))


class MixedBatches(IterableDataset):
    """Endless batches of at most `batch_tokens` padded tokens, tasks mixed by weight."""

    def __init__(self, recipe: Recipe, rank: int):
        self.recipe = recipe
        self.rank = rank
        self.datasets = recipe.data.datasets
        self.position = {"draws": 0, "consumed": [0] * len(self.datasets)}
        self._streams = None

    def __iter__(self):
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"draws": self.position["draws"], "consumed": list(self.position["consumed"])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = {"draws": int(state["draws"]), "consumed": [int(c) for c in state["consumed"]]}
        self._streams = None

    def _start(self) -> None:
        info = get_worker_info()
        worker = info.id if info else 0
        seed = self.recipe.seed
        self.tokenizer = MultimodalTokenizer(self.recipe.tokenizer, self.datasets)
        self._streams = []
        for d, ds in enumerate(self.datasets):
            stream = train_samples(
                expand_shards(ds.shards), stream_seed(seed, self.rank, worker, d), self.recipe.data.shuffle_buffer
            )
            for _ in range(self.position["consumed"][d]):
                next(stream)
            self._streams.append(stream)
        weights = [ds.weight for ds in self.datasets]
        self.sampler = TaskSampler(weights, stream_seed(seed, self.rank, worker, 1 << 20), self.position["draws"])
        self._consumed = list(self.position["consumed"])
        self._carry: TokenSequence | None = None

    def _next_sequence(self) -> TokenSequence:
        while True:
            d = next(self.sampler)
            raw = next(self._streams[d])
            self._consumed[d] += 1
            try:
                return self.tokenizer(decode_example(raw, d, self.datasets[d], self.recipe.tokenizer))
            except BadSample as bad:
                log.warning("skipped %s key=%s in %s: %s", self.datasets[d].name, raw.get("__key__"), raw.get("__url__"), bad)

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._streams is None:
            self._start()
        budget = self.recipe.data.batch_tokens
        seqs = [self._carry] if self._carry is not None else []
        while True:
            before = {"draws": self.sampler.draws, "consumed": list(self._consumed)}
            seq = self._next_sequence()
            if seqs and padded_tokens(seqs + [seq]) > budget:
                # `seq` opens the next batch; the position excludes it, so a
                # resume re-draws it from the same place.
                self._carry, self.position = seq, before
                break
            seqs.append(seq)
        return collate(seqs, self.tokenizer.patch_dims, BOS_ID)


def build_train_loader(recipe: Recipe, rank: int) -> StatefulDataLoader:
    workers = recipe.data.workers
    return StatefulDataLoader(
        MixedBatches(recipe, rank),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
