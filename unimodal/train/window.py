"""What the trainer sums between log records and over the stage, for the metrics.

`Window` sums each micro-batch's tokens, samples, FLOPs, data wait and losses
until the next log record, `DataCounts` the samples seen and skipped per
dataset over the whole stage (epochs, broken data). Both reduce across ranks
only when a record is logged, and both are stateful parts of the checkpoint
(unimodal/train/state.py), so a resumed run logs what an uninterrupted one would.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import torch
import torch.distributed as dist

from unimodal.config import Recipe, expand_shards
from unimodal.data.index import shard_samples
from unimodal.tokenize.sequence import IGNORE_INDEX
from unimodal.train.comm import all_reduce_sum


class Window:
    """Sums over the steps since the last log record, reduced across ranks when logged.

    What comes from the host batch (tokens, samples, FLOPs, data wait) is summed
    on the host; the losses stay on the device and are read back only when the
    window is logged or saved, so the step never waits for them.
    """

    HOST = ("steps", "tokens", "samples", "padded", "data_wait", "flops")

    def __init__(self, n_datasets: int, device: torch.device):
        self.n, self.device = n_datasets, device
        self.reset()

    def reset(self) -> None:
        self.host = np.zeros(len(self.HOST) + self.n)  # then samples per dataset
        self.losses = torch.zeros(1 + self.n, dtype=torch.float64, device=self.device)  # loss; per dataset
        self.start = time.perf_counter()

    def add(self, out: dict, batch: dict, host_batch: dict, data_wait: float, flops: int) -> None:
        """One micro-batch: the model's outputs, its batch on the device and as the loader gave it (host tensors)."""
        enc_mask, dec_out = host_batch["enc_mask"].numpy(), host_batch["dec_out"].numpy()
        dataset = host_batch["dataset"].numpy()
        real = int(enc_mask.sum() + (dec_out != IGNORE_INDEX).sum())
        self.host[: len(self.HOST)] += [1, real, len(dataset), enc_mask.size + dec_out.size, data_wait, flops]
        self.host[len(self.HOST) :] += np.bincount(dataset, minlength=self.n)
        self.losses[0] += out["loss"].detach().double()
        self.losses[1:].index_add_(0, batch["dataset"], out["sample_loss"].detach().double())

    def record(self, step: int, lr: float, names: list[str], world: int, peak: float | None) -> dict:
        local = torch.cat([torch.from_numpy(self.host), self.losses.cpu()])
        sums = all_reduce_sum(local).tolist()
        elapsed = time.perf_counter() - self.start
        steps, tokens, samples, padded, wait, flops = sums[: len(self.HOST)]
        counts, losses = sums[len(self.HOST) : len(self.HOST) + self.n], sums[len(self.HOST) + self.n :]
        rec = {
            "step": step,
            "loss": losses[0] / steps,
            "lr": lr,
            "tokens_per_s": tokens / elapsed,
            "samples_per_s": samples / elapsed,
            "padding_efficiency": tokens / padded,
            "data_wait_s": wait / world,
            "tflops_per_s": flops / elapsed / 1e12,
        }
        if peak:
            rec["mfu"] = flops / elapsed / (peak * world)
        for name, count, loss in zip(names, counts, losses[1:]):
            if count:
                rec[f"loss/{name}"] = loss / count
                rec[f"samples/{name}"] = int(count)
        self.reset()
        return rec

    def state_dict(self) -> dict:
        return {"host": self.host.tolist(), "losses": self.losses.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.host = np.array(state["host"], dtype=np.float64)
        self.losses = torch.tensor(state["losses"], dtype=torch.float64, device=self.device)

    @staticmethod
    def reshard(states: list[dict], rank: int) -> dict:
        """Saved on another topology: rank 0 holds the saved ranks' sums, the others none (the window's totals kept)."""
        return {key: np.sum([s[key] for s in states], axis=0) * (rank == 0) for key in ("host", "losses")}


class DataCounts:
    """Samples consumed and skipped per dataset over the whole stage, for epochs and broken data.

    Part of the checkpoint, so the counts run on across a resume.
    """

    def __init__(self, recipe: Recipe):
        self.names = [d.name for d in recipe.data.datasets]
        self.sizes = {d.name: sum(shard_samples(expand_shards(d.shards)) or [0]) for d in recipe.data.datasets}
        self.seen, self.skipped = Counter(), Counter()

    def add(self, meta: dict) -> None:
        self.seen.update(key.split("/", 1)[0] for key in meta["keys"])
        self.skipped.update(meta["skipped"])

    def state_dict(self) -> dict:
        return {"seen": dict(self.seen), "skipped": dict(self.skipped)}

    def load_state_dict(self, state: dict) -> None:
        self.seen, self.skipped = Counter(state["seen"]), Counter(state["skipped"])

    @staticmethod
    def reshard(states: list[dict], rank: int) -> dict:
        """Saved on another topology: rank 0 holds the saved ranks' counts, the others none."""
        seen, skipped = Counter(), Counter()
        for state in states:
            seen.update(state["seen"])
            skipped.update(state["skipped"])
        return {"seen": dict(seen) if rank == 0 else {}, "skipped": dict(skipped) if rank == 0 else {}}

    def record(self) -> dict:
        """Totals over all ranks: epochs per dataset (where index.json gives its size), skips."""
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self.state_dict())
        seen, skipped = Counter(), Counter()
        for part in parts:
            seen.update(part["seen"])
            skipped.update(part["skipped"])
        rec = {f"epochs/{n}": seen[n] / self.sizes[n] for n in self.names if self.sizes[n]}
        rec.update({f"skipped/{k}": v for k, v in sorted(skipped.items())})
        return rec
