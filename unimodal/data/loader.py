"""The training loader: mixed-task, token-budget batches built in DataLoader workers.

Each worker owns one `ShardStream` per dataset; it draws each sample's task,
decodes, tokenizes and collates, so the training process only receives ready
tensors. Workers take turns, so batch j of worker w (of W) is the rank's loader
batch b = j * W + w, which falls in training step b // accumulation (whose
target mix it draws from, unimodal/data/mix/policies.py) and is the run's
global micro-batch b * world + rank (whose task draws it takes,
unimodal/data/mix/sampler.py).
Broken samples (undecodable media, missing fields, truncated shards) are
skipped, logged with shard and key, and counted per dataset and reason; once a
dataset's skipped fraction passes `data.max_bad_fraction` the worker stops the
run with `TooManyBadSamples`, naming the dataset.

A worker's position (its batch count, each stream's cursor and shuffle
buffer, the counts) is plain data: torchdata's StatefulDataLoader collects it
per worker for the checkpoint and hands it back on resume. A resumed run
therefore sees exactly the batches an uninterrupted run would have seen, given
the same recipe, world size and worker count. On another topology no saved
position fits; the trainer's ledger of consumed samples does
(unimodal/data/ledger.py, `start_at`).
"""

from __future__ import annotations

import copy
import functools
import logging
from collections import Counter
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader

from unimodal.config import DatasetConfig, Recipe, expand_shards
from unimodal.data.decode import BadSample, decode_example
from unimodal.data.ledger import SampleLedger
from unimodal.data.mix.board import MixBoard
from unimodal.data.mix.policies import MixPolicy
from unimodal.data.mix.sampler import cumulative, micro_sampler
from unimodal.data.packing import fill_batch
from unimodal.data.stream import ShardStream, epoch_order, stream_seed
from unimodal.data.transport import pack, unpack
from unimodal.data.worker_signals import serve_through_a_stop
from unimodal.plugins import import_plugins
from unimodal.tokenize.multimodal import MultimodalTokenizer
from unimodal.tokenize.objectives import complete_rows
from unimodal.tokenize.sequence import TokenSequence, collate_rows
from unimodal.tokenize.text import BOS_ID

log = logging.getLogger(__name__)


MIN_READ = 100  # samples a worker reads from a dataset before its skipped fraction is judged
SNAPSHOT_EVERY = 32  # batches between the positions a worker sends along (see build_train_loader)
PREFETCH = 4  # batches each worker builds ahead of the trainer


class TooManyBadSamples(RuntimeError):
    """A dataset whose skipped samples passed `data.max_bad_fraction`."""


class MixedBatches(IterableDataset):
    """Endless batches of at most `batch_tokens` padded tokens, tasks mixed by weight.

    Besides tensors, each batch holds "meta": the samples' "dataset/key" names,
    the epoch each was read in, the skipped counts the batch's reading added, the
    global addresses it consumed and shard ends it read (for the ledger), its global
    micro-batch and the tasks it drew, in order.
    """

    def __init__(self, recipe: Recipe, rank: int, world: int, accumulation: int = 1, board: MixBoard | None = None):
        self.recipe, self.rank, self.world = recipe, rank, world
        self.accumulation, self.board = accumulation, board
        self.datasets: list[DatasetConfig] = recipe.data.datasets
        self._restore: dict[str, Any] | None = None
        self.first = 0  # the rank's loader batch this position starts at
        self.ledger: SampleLedger | None = None  # what a resume on another topology goes on from
        self.streams: list[ShardStream] | None = None

    def __iter__(self):
        return self

    def state_dict(self) -> dict[str, Any]:
        """Where the next batch starts: asked for between batches, when the live state is exactly that.

        Taken on demand, not after every batch: a position holds every shuffle
        buffer's coordinates, and the loader asks for one every 32nd batch.
        """
        return self._snapshot() if self.streams is not None else self._restore or {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restore = state or None
        self.streams = None

    def start_at(self, step: int, ledger: SampleLedger) -> None:
        """A fresh position at training step `step` after the samples `ledger` holds: a resume on another
        topology, where no saved position belongs to this worker (unimodal/train/elastic.py); before the
        workers start. Each `resample: false` stream first reads its share of what the open epochs left."""
        self.first, self.ledger = step * self.accumulation, copy.deepcopy(ledger)  # as it is now: the trainer adds on

    def _start(self) -> None:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        self.worker, self.workers, self.in_worker = worker, workers, info is not None
        slot, slots = self.rank * workers + worker, self.world * workers
        seed = self.recipe.seed
        self.tokenizer = MultimodalTokenizer(self.recipe.tokenizer, self.datasets, seed)
        self.streams = []
        for d, ds in enumerate(self.datasets):
            urls, stream_at = expand_shards(ds.shards), stream_seed(seed, d)
            left, epoch = {}, 0
            if self.ledger:
                left, epoch = self.ledger.left(d, functools.partial(epoch_order, stream_at, len(urls)), slot, slots)
            stream = ShardStream(
                urls,
                seed=stream_at,
                slot=slot,
                slots=slots,
                resample=ds.resample,
                shuffle_buffer=self.recipe.data.shuffle_buffer,
                on_broken=lambda err, d=d: self._skip(d, "broken shard", str(err)),
                epoch=epoch,
                left=left,
            )
            self.streams.append(stream)
        self.batches, pending = 0, []
        self.read = [0] * len(self.datasets)
        self.skipped = [Counter() for _ in self.datasets]
        if self._restore:
            pending, self.first = self._restore["pending"], int(self._restore.get("first", 0))
            self.batches = int(self._restore["batches"])
            self.read = [int(n) for n in self._restore["read"]]
            self.skipped = [Counter(c) for c in self._restore["skipped"]]
            for stream, state in zip(self.streams, self._restore["streams"]):
                stream.load_state_dict(state)
        self.policy = MixPolicy(self.recipe, self.board)
        self._drawn: list[int] = []  # the tasks drawn for the batch being built
        self._gone: list[list[int]] = []  # addresses of the samples it skipped as broken
        # samples drawn that did not fit an earlier batch, first in line: (dataset, raw, tokens if made)
        self._pending: list[tuple[int, dict[str, Any], TokenSequence | None]] = []
        for d, coord in pending:
            coord = tuple(int(x) for x in coord)
            self._pending.append((d, self.streams[d].fetch([coord])[coord], None))

    def _snapshot(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "batches": self.batches,
            "streams": [s.state_dict() for s in self.streams],
            "read": list(self.read),
            "skipped": [dict(c) for c in self.skipped],
            "pending": [[d, list(raw["__coord__"])] for d, raw, _ in self._pending],
        }

    def _skip(self, d: int, reason: str, where: str) -> None:
        """Count a broken sample or shard; stop the run when the dataset is mostly broken."""
        ds = self.datasets[d]
        self.skipped[d][reason] += 1
        if reason == "broken shard":
            self.read[d] += 1
        log.warning("%s: skipped (%s) %s", ds.name, reason, where)
        bad, read = sum(self.skipped[d].values()), self.read[d]
        limit = self.recipe.data.max_bad_fraction
        if read >= MIN_READ and bad > limit * read:
            reasons = ", ".join(f"{r}: {n}" for r, n in self.skipped[d].most_common())
            raise TooManyBadSamples(
                f"dataset {ds.name}: {bad} of {read} samples read were skipped ({reasons}), "
                f"over data.max_bad_fraction={limit}; check its shards with `unimodal data inspect {ds.shards}`"
            )

    def _next_sample(self) -> tuple[int, dict[str, Any], TokenSequence]:
        """The next usable sample: its dataset, raw bytes and tokens; broken ones are skipped."""
        while True:
            if self._pending:
                d, raw, seq = self._pending.pop(0)
                if seq is not None:
                    return d, raw, seq
            else:
                d = self.sampler.draw(self._cum)
                self._drawn.append(d)
                raw = next(self.streams[d])
                self.read[d] += 1
            try:
                return d, raw, self.tokenizer(decode_example(raw, d, self.datasets[d], self.recipe.tokenizer))
            except BadSample as bad:
                self._gone.append([d, *raw["__addr__"]])
                self._skip(d, bad.reason, f"{raw['__url__']} key {raw['__key__']}: {bad}")

    def __next__(self) -> dict[str, Any]:
        if self.streams is None:
            self._start()
        skipped_before = [dict(c) for c in self.skipped]
        batch_index = self.first + self.batches * self.workers + self.worker
        micro = batch_index * self.world + self.rank  # the run's global micro-batch
        self._cum = cumulative(self.policy.target(batch_index // self.accumulation))
        self.sampler, self._drawn, self._gone = micro_sampler(self.recipe.seed, micro), [], []
        data = self.recipe.data
        # samples set aside join self._pending: a later batch opens with them; they are part of the position
        packer, items = fill_batch(self._next_sample, self._pending, data.batch_tokens, data.pack_length)
        self.batches += 1
        batch = collate_rows(complete_rows(packer.rows), self.tokenizer.patch_dims, BOS_ID, packer.enc_length)
        batch["meta"] = {
            "keys": [f"{self.datasets[d].name}/{raw['__key__']}" for d, raw, _ in items],
            "epochs": [raw["__epoch__"] for _, raw, _ in items],
            "skipped": skipped_between(self.datasets, skipped_before, self.skipped),
            "addrs": [[d, *raw["__addr__"]] for d, raw, _ in items] + self._gone,
            "ends": [[d, *end] for d, stream in enumerate(self.streams) for end in stream.ends],
            "micro": micro,
            "draws": self._drawn,
        }
        for stream in self.streams:
            stream.ends.clear()
        return pack(batch) if self.in_worker else batch  # TrainLoader unpacks it on the trainer's side


class TrainLoader(StatefulDataLoader):
    """torchdata's StatefulDataLoader, its batches unpacked as they arrive (unimodal/data/transport.py)."""

    def __iter__(self):
        return map(unpack, super().__iter__())


def skipped_between(datasets: list[DatasetConfig], start: list[dict[str, int]], end: list[Counter]) -> dict[str, int]:
    """{"dataset/reason": n} skipped between two readings of the per-dataset skip counts."""
    out = {}
    for ds, before, after in zip(datasets, start, end):
        for reason, n in after.items():
            if n - before.get(reason, 0):
                out[f"{ds.name}/{reason}"] = n - before.get(reason, 0)
    return out


def mix_lag(recipe: Recipe, accumulation: int) -> int:
    """Steps from a loss-aware update to the first step it may steer: past every prefetched batch."""
    ahead = PREFETCH * recipe.data.workers + 1
    return -(-ahead // accumulation)


def start_worker(stopping, plugins: list[str], worker: int) -> None:
    """A worker's start: the recipe's plugins imported (a forked worker has them, a spawned one not yet)."""
    import_plugins(plugins)
    serve_through_a_stop(stopping, worker)


def build_train_loader(
    recipe: Recipe, rank: int, world: int = 1, accumulation: int = 1, stopping=None, pin_memory: bool = False
) -> TrainLoader:
    """This rank's loader; `world` ranks x `data.workers` workers share the shards.

    `accumulation` (micro-batches per step) maps batches to steps for the target mix.
    `stopping` is the trainer's shared stop flag (`StepGuard.stopping`), for `serve_through_a_stop`.
    With loss-aware sampling the loader's dataset carries the `MixBoard` the trainer writes to.
    `pin_memory` (for a GPU) pins each batch, so its copy to the device is asynchronous (unimodal/train/feed.py).
    """
    workers = recipe.data.workers
    slots = world * max(1, workers)
    for i, ds in enumerate(recipe.data.datasets):
        shards = len(expand_shards(ds.shards))
        if not ds.resample and shards < slots:
            raise ValueError(
                f"data.datasets.{i} ({ds.name}): resample: false deals {shards} shards over "
                f"{world} ranks x {max(1, workers)} workers; it needs at least {slots} shards "
                "(write smaller ones with `unimodal shards write --max-count`) or resample: true"
            )
    s = recipe.data.sampling
    board = None
    if s.strategy == "loss_aware":  # made before the workers start, so they share its memory
        board = MixBoard(len(recipe.data.datasets), mix_lag(recipe, accumulation), s.update_every)
    return TrainLoader(
        MixedBatches(recipe, rank, world, accumulation, board),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=PREFETCH if workers else None,
        persistent_workers=False,
        pin_memory=pin_memory,
        worker_init_fn=functools.partial(start_worker, stopping, recipe.plugins),
        # a worker sends its position with every 32nd batch, not every batch (the position of a
        # shuffle buffer is hundreds of coordinates); a restored loader replays the batches since
        # the last snapshot, which this deterministic pipeline rebuilds exactly
        snapshot_every_n_steps=SNAPSHOT_EVERY,
    )
