"""Validation during training (`train.eval_every`): each dataset's held-out loss and metrics on a fixed subset.

Every `train.eval_every` steps, for each dataset with `eval_shards`, the
trainer scores the first `train.eval_samples` decodable samples of them (the
same ones every time, decoded once), cut into batches of `BATCH` as
`unimodal eval` cuts them (unimodal/eval/harness.py). All ranks work at once:
batch j is rank j % world's.

- The loss is the training loss, each sample's mean over its objectives'
  terms as in the training records' `loss/<dataset>`, from the engine's module
  in eval mode and without backward; the sums and counts are all-reduced. A
  batch's contrastive pairs are scored against each other only (not against
  other ranks' pairs, as in training), so each batch's losses are those of a
  one-process pass, whatever the number of ranks. Under ZeRO-3 forward is
  collective (the parameters are gathered as it goes), so every rank runs as
  many: a rank short of batches runs the subset's first one again, not counted.
- The metrics do not all decompose into sums (corpus BLEU and WER, recall@K
  over the whole subset), so each rank's predictions, batch by batch (its
  objective's `predict`, unimodal/objectives/registry.py), are gathered on
  every rank, put back in batch order and measured as one set (its
  `measure`): the numbers of a one-process `harness.score` over the same
  batches. These passes make no collective call,
  so under ZeRO-1/2 they run on the engine's module; under ZeRO-3, whose
  parameters are partitioned, on a whole copy gathered for the occasion (one
  fp32 model per rank while it runs).

Training does not see it: the random generators are restored after it
(unimodal/train/rng.py), the model goes back to train mode, and the loader,
balancer and metrics window are not touched, so a resumed run logs the same
records as an uninterrupted one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from unimodal.config import Recipe
from unimodal.eval.harness import scored, subset_batches
from unimodal.model import ModelConfig, UnifiedModel
from unimodal.objectives import objective
from unimodal.tokenize.multimodal import MultimodalTokenizer
from unimodal.train.checkpoint import full_state_dict
from unimodal.train.comm import all_reduce_sum
from unimodal.train.feed import DeviceFeed
from unimodal.train.rng import untouched

BATCH = 16  # held-out samples per batch: the unit ranks share out, and the batch a one-process pass uses


class Validator:
    """`validator(step)`: the record `{"step", "val/<dataset>/loss", "val/<dataset>/<metric>"}`, on every rank."""

    def __init__(self, recipe: Recipe, engine, cfg: ModelConfig, feed: DeviceFeed):
        self.engine, self.cfg, self.feed = engine, cfg, feed
        self.max_new_tokens = recipe.train.max_new_tokens
        self.tokenizer = MultimodalTokenizer(recipe.tokenizer, recipe.data.datasets, recipe.seed)
        with untouched():
            self.subsets = {
                ds.name: (ds, subset_batches(recipe, d, ds, self.tokenizer, recipe.train.eval_samples, BATCH))
                for d, ds in enumerate(recipe.data.datasets)
                if ds.eval_shards is not None
            }

    @torch.no_grad()
    def __call__(self, step: int) -> dict:
        rank, world = dist.get_rank(), dist.get_world_size()
        module = self.engine.module
        gather_pairs = module.gather_pairs
        with untouched():
            module.eval()
            module.gather_pairs = False  # a batch's contrastive pairs are its own negatives, whoever runs it
            try:
                losses = self._losses(module, rank, world)
                model = module if self.engine.zero_optimization_stage() < 3 else self._whole_copy()
                metrics = self._metrics(model, rank, world)
            finally:
                module.train()
                module.gather_pairs = gather_pairs
        record = {"step": step}
        for name, (loss, count) in zip(self.subsets, losses.view(-1, 2).tolist()):
            record[f"val/{name}/loss"] = loss / count
            record |= {f"val/{name}/{m}": v for m, v in metrics.get(name, {}).items()}
        return record

    def _losses(self, module: torch.nn.Module, rank: int, world: int) -> torch.Tensor:
        """[sum of sample losses, samples] per dataset, over all ranks."""
        sums = torch.zeros(len(self.subsets), 2, dtype=torch.float64)
        for i, (_, batches) in enumerate(self.subsets.values()):
            mine = batches[rank::world]
            for n in range(-(-len(batches) // world)):  # as many forwards on every rank
                sample_loss = module(self.feed((mine[n] if n < len(mine) else batches[0])[0]))["sample_loss"]
                if n < len(mine):
                    sums[i] += torch.tensor([sample_loss.double().sum().item(), len(sample_loss)])
        return all_reduce_sum(sums)

    def _metrics(self, model: UnifiedModel, rank: int, world: int) -> dict[str, dict[str, float]]:
        sets = {name: (objective(ds.objective), ds, b) for name, (ds, b) in self.subsets.items() if scored(ds)}
        mine = {
            name: [
                o.predict(model, self.feed(batch), refs, self.tokenizer, self.max_new_tokens)
                for batch, refs in b[rank::world]
            ]
            for name, (o, _, b) in sets.items()
        }
        parts = [None] * world
        dist.all_gather_object(parts, mine)
        return {name: o.measure(in_batch_order([p[name] for p in parts]), ds) for name, (o, ds, _) in sets.items()}

    def _whole_copy(self) -> UnifiedModel:
        model = UnifiedModel(self.cfg)
        model.load_state_dict(full_state_dict(self.engine))
        return model.to(self.feed.device, self.feed.dtype).eval()


def in_batch_order(parts: list[list]) -> list:
    """Per-batch predictions of every rank, rank r's list holding batches r, r + world, ...: one list in batch order."""
    world = len(parts)
    return [parts[j % world][j // world] for j in range(sum(map(len, parts)))]
