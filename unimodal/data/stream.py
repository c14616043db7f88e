"""Raw samples from WebDataset shards, one shard at a time, with a resumable position.

A dataset's stream is an endless sequence of shard passes ("epochs"). In each
epoch the shard order is a pure function of (seed, epoch, rank, worker):

    resample=True   each (rank, worker) draws len(shards) shards with replacement,
                    its own seed, so mixing never runs dry;
    resample=False  one global permutation of the shards per epoch, dealt out
                    to the world's (rank, worker) slots round-robin, so across all
                    ranks and workers every sample is read exactly once per epoch.

Shards are opened with webdataset's own URL opener (local paths, `pipe:`
commands, http), their members read by `unimodal.data.tar` (a lean header
parser: Python's tarfile costs a tenth of an image sample's time) and grouped
into samples by webdataset's `group_by_keys`; a shard that breaks mid-way (truncated,
unreadable) ends early with `BrokenShard`, and the stream moves on. Samples
then pass a seeded shuffle buffer. The position (epoch, shard, offset, and the
coordinates of the samples in the buffer with the buffer's RNG state) is plain
data: restoring it re-reads only the shards the buffer spans, never the epoch.
Each sample also carries its global address (epoch, shard index, offset), the
same on any topology, and a `resample: false` stream notes each shard it reads
to the end: the trainer's ledger of consumed samples (unimodal/data/ledger.py)
is kept from these, and a resume on another topology hands each stream its
share of the interrupted epochs (`left`), read before the next epoch starts.
Nothing is decoded here: samples stay bytes until `decode_example`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import webdataset as wds
from webdataset.tariterators import group_by_keys

from unimodal.data.ledger import Left, Ranges, covers
from unimodal.data.tar import tar_members

log = logging.getLogger(__name__)


class BrokenShard(Exception):
    """A shard that could not be read to its end (truncated tar, failed pipe, bad gzip)."""

    def __init__(self, url: str, detail: str):
        super().__init__(f"{url}: {detail}")
        self.url = url


def stream_seed(*parts: int) -> int:
    """A well-mixed 32-bit seed from (seed, rank, worker, dataset, ...)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def read_shard(url: str) -> Iterator[dict[str, Any]]:
    """The samples of one shard, in order, as {"__key__", "__url__", ext: bytes}.

    Opens `url` with webdataset's `gopen` (paths, `pipe:`, http) and groups
    members into samples with its `group_by_keys`. Raises BrokenShard after the
    last complete sample when the shard breaks; the sample being read then is
    dropped, never yielded half-read.
    """
    try:
        stream = wds.gopen(url)
    except Exception as err:  # gopen raises whatever its backend raises
        raise BrokenShard(url, f"cannot open ({err!r})") from None
    try:
        yield from group_by_keys({"fname": name, "data": data, "__url__": url} for name, data in tar_members(stream))
    except Exception as err:  # the tar reader, the decompressors and pipes each raise their own kinds
        raise BrokenShard(url, f"{type(err).__name__}: {err}") from None
    finally:
        try:
            stream.close()
        except Exception as err:  # a `pipe:` command that failed reports it on close
            log.warning("closing %s: %r", url, err)


def epoch_order(seed: int, shards: int, epoch: int) -> list[int]:
    """A `resample: false` dataset's shards in `epoch`, as indices into its list: one permutation for the world."""
    return np.random.default_rng([seed, epoch]).permutation(shards).tolist()


Coord = tuple[int, int, int]  # (epoch, shard position in that epoch's order, sample offset in the shard)


class ShardStream:
    """One dataset's endless raw samples for one (rank, worker) slot of the world, resumable.

    `seed` is the dataset's seed, the same on every slot (the epoch permutation
    must agree across slots); `slot` in [0, slots) is rank * workers + worker.
    """

    def __init__(
        self,
        urls: list[str],
        *,
        seed: int,
        slot: int,
        slots: int,
        resample: bool,
        shuffle_buffer: int,
        on_broken: Callable[[BrokenShard], None],
        epoch: int = 0,
        left: Left | None = None,
    ):
        if not resample and len(urls) < slots:
            raise ValueError(
                f"{len(urls)} shards cannot be split over {slots} loader slots (ranks x workers): "
                "write more, smaller shards (`unimodal shards write --max-count`) or set resample: true"
            )
        self.urls, self.seed, self.slot, self.slots = urls, seed, slot, slots
        self.resample, self.size, self.on_broken = resample, shuffle_buffer, on_broken
        # a resume on another topology (unimodal/data/ledger.py): epochs before `epoch` left to read on this slot
        self.left = left or {}
        self.fresh_from = epoch  # the first epoch read whole, in the order `order` gives
        self.epoch, self.shard, self.offset = min(self.left, default=epoch), 0, 0  # the cursor: the next sample read
        self.buffer: list[tuple[Coord, dict[str, Any]]] = []
        self.rng = np.random.default_rng([seed, slot])  # the shuffle buffer's draws
        self.ends: list[tuple[int, int, int]] = []  # (epoch, shard index, samples) of each shard read to its end
        self._reader: Iterator[dict[str, Any]] | None = None
        self._order: tuple[int, list[int]] = (-1, [])
        self._empty_shards = 0

    def order(self, epoch: int) -> list[int]:
        """The shards (indices into `urls`) this slot draws in `epoch` with `resample`, else the epoch's global order."""
        n = len(self.urls)
        if self.resample:
            return np.random.default_rng([self.seed, self.slot, epoch]).integers(n, size=n).tolist()
        return epoch_order(self.seed, n, epoch)

    def shards(self, epoch: int) -> list[int]:
        """This slot's shards for `epoch`, in reading order."""
        if epoch < self.fresh_from:
            return [u for u, _ in self.left.get(epoch, [])]
        return self.order(epoch) if self.resample else self.order(epoch)[self.slot :: self.slots]

    def _epoch_order(self) -> list[int]:
        if self._order[0] != self.epoch:
            self._order = (self.epoch, self.shards(self.epoch))
        return self._order[1]

    def _taken(self) -> Ranges:
        """The offsets of the shard being read that were consumed before a resume on another topology."""
        return self.left[self.epoch][self.shard][1] if self.epoch < self.fresh_from else []

    def _read(self) -> tuple[Coord, dict[str, Any]]:
        """The next raw sample in shard order, with its coordinates."""
        while True:
            if self._reader is None:
                shards = self._epoch_order()
                if self.shard >= len(shards):
                    self.epoch, self.shard, self.offset = self.epoch + 1, 0, 0
                    continue
                self._reader = read_shard(self.urls[shards[self.shard]])
                for _ in range(self.offset):  # resuming inside a shard
                    next(self._reader)
            try:
                sample = next(self._reader)
            except (StopIteration, BrokenShard) as end:
                if isinstance(end, BrokenShard):
                    self.on_broken(end)
                if not self.resample:
                    self.ends.append((self.epoch, self._epoch_order()[self.shard], self.offset))
                self._empty_shards = self._empty_shards + 1 if self.offset == 0 else 0
                if self._empty_shards > 2 * len(self.urls):
                    raise BrokenShard(self.urls[0], f"no sample in {self._empty_shards} shards in a row") from None
                self._reader, self.shard, self.offset = None, self.shard + 1, 0
                continue
            coord = (self.epoch, self.shard, self.offset)
            self.offset += 1
            if not covers(self._taken(), coord[2]):
                return coord, self._tag(sample, coord, self._epoch_order()[self.shard])

    def __iter__(self) -> ShardStream:
        return self

    def __next__(self) -> dict[str, Any]:
        if not self.size:
            return self._read()[1]
        while len(self.buffer) < self.size:
            self.buffer.append(self._read())
        k = int(self.rng.integers(self.size))
        sample = self.buffer[k][1]
        self.buffer[k] = self._read()
        return sample

    def state_dict(self) -> dict[str, Any]:
        """Plain data: the reading cursor, the buffer's sample coordinates, the shuffle RNG."""
        return {
            "epoch": self.epoch,
            "shard": self.shard,
            "offset": self.offset,
            "buffer": [list(coord) for coord, _ in self.buffer],
            "rng": self.rng.bit_generator.state,
            "left": [[e, u, took] for e, shards in self.left.items() for u, took in shards],
            "fresh_from": self.fresh_from,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Return to `state`, re-reading the buffered samples from the shards they came from."""
        self.epoch, self.shard, self.offset = int(state["epoch"]), int(state["shard"]), int(state["offset"])
        self.left, self.fresh_from = {}, int(state.get("fresh_from", 0))
        for e, u, took in state.get("left", []):
            self.left.setdefault(int(e), []).append((int(u), [list(r) for r in took]))
        self.rng.bit_generator.state = state["rng"]
        self._reader, self._order = None, (-1, [])
        coords = [tuple(int(x) for x in c) for c in state["buffer"]]
        found = self.fetch(coords)
        self.buffer = [(c, found[c]) for c in coords]

    def fetch(self, coords: list[Coord]) -> dict[Coord, dict[str, Any]]:
        """The raw samples at `coords`, each shard read once and only as far as needed."""
        wanted: dict[tuple[int, int], set[int]] = {}
        for epoch, shard, offset in coords:
            wanted.setdefault((epoch, shard), set()).add(offset)
        found: dict[Coord, dict[str, Any]] = {}
        for (epoch, shard), offsets in wanted.items():
            u = self.shards(epoch)[shard]
            url = self.urls[u]
            for offset, sample in enumerate(read_shard(url)):
                if offset in offsets:
                    found[(epoch, shard, offset)] = self._tag(sample, (epoch, shard, offset), u)
                if offset == max(offsets):
                    break
            if not all((epoch, shard, o) in found for o in offsets):
                raise BrokenShard(url, "holds fewer samples than when the checkpoint was written")
        return found

    @staticmethod
    def _tag(sample: dict[str, Any], coord: Coord, u: int) -> dict[str, Any]:
        """The sample's coordinates on this slot, and its global address (epoch, index `u` of its shard, offset)."""
        sample["__epoch__"], sample["__coord__"], sample["__addr__"] = coord[0], coord, (coord[0], u, coord[2])
        return sample


def eval_samples(urls: list[str]) -> Iterator[dict[str, Any]]:
    """Held-out samples: every shard once, in order; a broken shard raises."""
    for url in urls:
        yield from read_shard(url)
