"""Which samples the trainer has consumed, by global address: the data position on any topology.

Every raw sample carries its global address, (epoch, shard, offset): the
epoch of its dataset's stream, the shard's index in the dataset's list of
shards and the sample's place in the shard. None of the three depends on the
world size or the number of loader workers. Each batch names the addresses
it consumed (trained, or skipped as broken) in its meta, and the shards its
reading came to the end of, with their sample counts. The trainer enters
both here, micro-batch by micro-batch, and the ledger is a stateful part of
every checkpoint (unimodal/train/state.py), so at a checkpoint it holds
exactly what the run has consumed. It is one state for the whole job: at each
checkpoint the ranks' ledgers are united (`unite`), each rank goes on from the
union, and only the epochs not yet consumed whole keep their shards' offsets:

    per dataset: "next"    the epoch after the latest any consumed sample came from;
                 "closed"  the epochs consumed whole;
                 "open"    for each epoch not yet consumed whole, each shard touched:
                           the offsets consumed, as ranges [start, end), and the
                           shard's size once a reader came to its end

An epoch is closed (its shards dropped) once every shard's size is known and
its offsets are all consumed. A run resumed on another topology deals what
the unclosed epochs before "next" have left of each `resample: false`
dataset, shard by shard in the epoch's shard order, round-robin to the new
ranks x workers (`left`); each reader skips the consumed offsets of its
shards, and every stream then goes on at "next".
So the samples of an interrupted epoch are each trained once, whatever the
topology before and after; their order is the new topology's.
"""

from __future__ import annotations

import copy
from bisect import bisect_right
from collections.abc import Callable
from typing import Any

from unimodal.config import DatasetConfig, expand_shards

Ranges = list[list[int]]  # sorted, disjoint [start, end) offsets
Left = dict[int, list[tuple[int, Ranges]]]  # one loader slot's share: epoch -> [(shard index, offsets consumed)]


def add_offset(ranges: Ranges, x: int) -> None:
    """Put `x` into `ranges`, merging neighbours; nothing changes if it is there already."""
    i = bisect_right(ranges, [x, float("inf")])  # the first range starting after x
    if i and ranges[i - 1][1] >= x:  # ends at or after x: x is in it, or extends it
        if ranges[i - 1][1] == x:
            ranges[i - 1][1] = x + 1
            if i < len(ranges) and ranges[i][0] == x + 1:
                ranges[i - 1][1] = ranges.pop(i)[1]
        return
    if i < len(ranges) and ranges[i][0] == x + 1:
        ranges[i][0] = x
    else:
        ranges.insert(i, [x, x + 1])


def covers(ranges: Ranges, x: int) -> bool:
    i = bisect_right(ranges, [x, float("inf")])
    return bool(i) and ranges[i - 1][1] > x


def union(a: Ranges, b: Ranges) -> Ranges:
    """The offsets in either."""
    out: Ranges = []
    for start, end in sorted(a + b):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return out


def complete(shard: dict[str, Any] | None) -> bool:
    """A shard whose size is known and whose samples were all consumed."""
    if shard is None or shard["size"] is None:
        return False
    return shard["size"] == 0 or shard["took"] == [[0, shard["size"]]]


class SampleLedger:
    """The samples consumed per dataset, by global address (see the module's docstring)."""

    def __init__(self, datasets: list[DatasetConfig]):
        self.names = [d.name for d in datasets]
        self.shards = {d.name: len(expand_shards(d.shards)) for d in datasets}
        self.exact = {d.name for d in datasets if not d.resample}  # epochs are global: consumption is kept
        self.load_state_dict({"next": {}, "closed": {}, "open": {}})

    def _shard(self, name: str, epoch: int, shard: int) -> dict[str, Any]:
        return self.open[name].setdefault(epoch, {}).setdefault(shard, {"took": [], "size": None})

    def add(self, meta: dict) -> None:
        """One micro-batch's consumed addresses (`meta["addrs"]`: [d, epoch, shard, offset]) and the shard ends
        its reading came to (`meta["ends"]`: [d, epoch, shard, samples])."""
        touched = set()
        for d, epoch, shard, offset in meta["addrs"]:
            name = self.names[d]
            self.next[name] = max(self.next[name], epoch + 1)
            if name in self.exact and epoch not in self.closed[name]:
                add_offset(self._shard(name, epoch, shard)["took"], offset)
                touched.add((name, epoch))
        for d, epoch, shard, size in meta["ends"]:
            name = self.names[d]
            if name in self.exact and epoch not in self.closed[name]:
                self._shard(name, epoch, shard)["size"] = size
                touched.add((name, epoch))
        for name, epoch in touched:
            self._close(name, epoch)

    def _close(self, name: str, epoch: int) -> None:
        shards = self.open[name].get(epoch, {})
        if len(shards) == self.shards[name] and all(map(complete, shards.values())):
            del self.open[name][epoch]
            self.closed[name].add(epoch)

    def left(self, d: int, order: Callable[[int], list[int]], slot: int, slots: int) -> tuple[Left, int]:
        """Dataset `d` on loader slot `slot` of `slots`: its share of what the unclosed epochs before "next" have
        left, shard by shard in each epoch's order (`order(epoch)`), dealt round-robin; and "next", the epoch
        its stream goes on at once they are read. Only `resample: false` datasets have a share."""
        name = self.names[d]
        if name not in self.exact:
            return {}, self.next[name]
        epochs = [e for e in range(self.next[name]) if e not in self.closed[name]]
        left = [(e, u) for e in epochs for u in order(e) if not complete(self.open[name].get(e, {}).get(u))]
        mine: Left = {}
        for e, u in left[slot::slots]:
            shard = self.open[name].get(e, {}).get(u)
            mine.setdefault(e, []).append((u, shard["took"] if shard else []))
        return mine, self.next[name]

    def state_dict(self) -> dict[str, Any]:
        return {"next": dict(self.next), "closed": {n: sorted(c) for n, c in self.closed.items()}, "open": self.open}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next = {name: int(state["next"].get(name, 0)) for name in self.names}
        self.closed = {name: {int(e) for e in state["closed"].get(name, [])} for name in self.names}
        self.open = {name: {} for name in self.names}
        for name, epochs in state["open"].items():
            if name in self.open:
                self.open[name] = {
                    int(e): {
                        int(u): {"took": [list(r) for r in s["took"]], "size": s["size"]} for u, s in shards.items()
                    }
                    for e, shards in epochs.items()
                }

    def unite(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        """The union of several ranks' ledgers, epochs consumed whole closed: what the whole job consumed.
        The union of a union and its parts is the union again, so nothing counts twice."""
        merged = copy.copy(self)  # the same datasets
        merged.load_state_dict({"next": {}, "closed": {}, "open": {}})
        for state in states:
            for name in self.names:
                merged.next[name] = max(merged.next[name], int(state["next"].get(name, 0)))
                merged.closed[name] |= {int(e) for e in state["closed"].get(name, [])}
            for name, epochs in state["open"].items():
                for e, shards in epochs.items():
                    for u, s in shards.items():
                        mine = merged._shard(name, int(e), int(u))
                        mine["took"] = union(mine["took"], [list(r) for r in s["took"]])
                        mine["size"] = s["size"] if s["size"] is not None else mine["size"]
        for name in self.names:
            for e in list(merged.open[name]):
                if e in merged.closed[name]:
                    del merged.open[name][e]
                else:
                    merged._close(name, e)
        return merged.state_dict()
