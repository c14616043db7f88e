"""The trainer's resumable state: DeepSpeed's engine, the step, and each rank's named stateful parts.

The trainer hands its stateful parts to a `Checkpointer` once, by name, as a
dict (the loader's position, the data counts, the ledger of consumed samples,
the balancer, the metrics window, the random generators). A part is anything with `state_dict()` and
`load_state_dict(state)`, as torch's modules and StatefulDataLoader have.
The engine's state (model, optimiser, scheduler) goes through DeepSpeed's
checkpoint (unimodal/train/checkpoint.py); ours rides in its `client_state`,
which DeepSpeed writes from rank 0 only, so a save gathers every rank's parts.
A part that has a `unite(states)` is one state for the whole job (the ledger
of consumed samples): at each save the ranks' states are united, every rank
goes on from the union, and the checkpoint holds it once:

    {"step": 8, "skipped_nonfinite": 0, "shared": {"ledger": ...},
     "ranks": [{"loader": ..., "data": ..., ...}, ...]}

A resume loads the engine and reads the step first (`load`), then hands each
part its state when its turn comes (`restore`): some before the loader's
workers start, the random state after (see unimodal/train/loop.py).

A checkpoint written on another world size or number of loader workers
(unimodal/train/elastic.py) has no state for this rank as such: a part that
can be dealt anew has a `reshard(states, rank)` that makes this rank's state
from every saved rank's (sums go to rank 0, what all ranks share to each);
one without it (the loader's positions, the random state) starts afresh. A
shared part gets the shared state on any topology.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch.distributed as dist

from unimodal.train.checkpoint import load_latest, save_checkpoint
from unimodal.train.elastic import untie_steps


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Checkpointer:
    """Saves the engine and the named parts to `ckpt_dir`, keeping the newest `keep`; loads them back.

    `topology` is what each checkpoint records of the run's layout (unimodal/train/elastic.py).
    """

    def __init__(self, engine, ckpt_dir: Path, keep: int, topology: dict[str, Any]):
        self.engine, self.dir, self.keep, self.topology = engine, ckpt_dir, keep, topology
        self.parts: dict[str, Stateful] = {}
        self.saved: list[dict[str, Any]] | None = None  # every rank's parts in the checkpoint loaded
        self.shared: dict[str, Any] = {}  # the job's shared parts in it
        self.reshard = False  # the checkpoint was written on another world size or number of workers

    def load(self, universal: str | None = None, reshard: bool = False) -> tuple[int, int]:
        """Load the latest checkpoint (or its `universal` conversion) into the engine: its step and its steps
        skipped as non-finite. `reshard`: written on another topology, the parts are dealt anew."""
        client_state = load_latest(self.engine, self.dir, universal)
        if client_state is None:
            return 0, 0
        if universal:
            untie_steps(self.engine)
        saved_by, world = len(client_state["ranks"]), dist.get_world_size()
        if saved_by != world and not reshard:
            raise ValueError(f"{self.dir}: saved by {saved_by} ranks, resumed on {world}")
        self.saved, self.shared, self.reshard = client_state["ranks"], client_state.get("shared", {}), reshard
        return int(client_state["step"]), int(client_state["skipped_nonfinite"])

    def track(self, parts: dict[str, Stateful]) -> None:
        """The parts each checkpoint holds, by the names they are saved under."""
        self.parts = parts

    def restore(self, *names: str) -> None:
        """Hand the named parts, in this order, their state in the checkpoint loaded (none when starting fresh)."""
        if not self.saved:
            return
        rank = dist.get_rank()
        for name in names:
            part = self.parts[name]
            if name in self.shared:
                part.load_state_dict(self.shared[name])
            elif name not in self.saved[0]:  # a part added since the checkpoint was written
                if self.reshard:  # its state is what this topology would go on from
                    raise ValueError(
                        f"{self.dir}: the checkpoint has no {name!r} state (written by an older unimodal), which a "
                        f"resume on another world size or data.workers needs; resume it on the topology that wrote it"
                    )
                continue  # on the same topology it starts afresh
            elif not self.reshard:
                part.load_state_dict(self.saved[rank][name])
            elif hasattr(part, "reshard"):
                part.load_state_dict(part.reshard([r[name] for r in self.saved], rank))

    def save(self, step: int, skipped_nonfinite: int) -> None:
        """Checkpoint step `step` (all ranks call this)."""
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, {name: part.state_dict() for name, part in self.parts.items()})
        shared = {}
        for name, part in self.parts.items():
            if hasattr(part, "unite"):
                shared[name] = part.unite([r.pop(name) for r in ranks])
                part.load_state_dict(shared[name])
        client_state = {"step": step, "skipped_nonfinite": skipped_nonfinite, "shared": shared, "ranks": ranks}
        save_checkpoint(self.engine, self.dir, step, client_state, self.keep, self.topology)
