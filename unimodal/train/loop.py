"""One curriculum stage on this rank: the training loop.

Launched once per rank by `deepspeed`, `torchrun` or SLURM (see
`unimodal.train.__main__`). Each step pulls a ready batch from the loader,
runs DeepSpeed's forward/backward/step, and every `logging.every` steps
all-reduces the window's sums so rank 0 can log global numbers. Before each
backward pass the ranks agree whether to skip the batch (a non-finite loss)
and whether a stop signal came (unimodal/train/guard.py); a stopped run saves
a checkpoint and returns None. A checkpoint holds everything the steps after
it depend on, so a resumed run logs, on CPU, exactly the uninterrupted run's losses.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from unimodal.config import Recipe, expand_shards
from unimodal.data.index import shard_samples
from unimodal.data.loader import build_train_loader
from unimodal.model import UnifiedModel, count_parameters
from unimodal.model.distill import DistillPlan
from unimodal.model.flops import batch_train_flops
from unimodal.model.pretrained import save_weights
from unimodal.model.transformer import compiled_graphs
from unimodal.objectives.contrastive import CONTRASTIVE
from unimodal.tokenize.multimodal import MultimodalTokenizer
from unimodal.tokenize.sequence import IGNORE_INDEX
from unimodal.train.balancer import Balancer
from unimodal.train.checkpoint import DONE, full_state_dict, load_latest, remove_partial, save_checkpoint
from unimodal.train.comm import all_reduce_sum, init_distributed
from unimodal.train.engine import build_engine, model_config
from unimodal.train.feed import DeviceFeed
from unimodal.train.freeze import freeze_all_but
from unimodal.train.guard import StepGuard
from unimodal.train.memory import peak_memory_mib
from unimodal.train.metrics import MetricsLogger
from unimodal.train.mfu import peak_flops
from unimodal.train.resume import agree
from unimodal.train.rng import rng_state, set_rng_state
from unimodal.train.sample_log import SampleLog
from unimodal.train.start import check_start, describe, init_weights, layout, load_optimizer_state


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


class DataCounts:
    """Samples consumed and skipped per dataset over the whole stage, for epochs and broken data.

    Kept in the checkpoint, so the counts run on across a resume.
    """

    def __init__(self, recipe: Recipe, state: dict | None = None):
        self.names = [d.name for d in recipe.data.datasets]
        self.sizes = {d.name: sum(shard_samples(expand_shards(d.shards)) or [0]) for d in recipe.data.datasets}
        self.seen = Counter(state["seen"]) if state else Counter()
        self.skipped = Counter(state["skipped"]) if state else Counter()

    def add(self, meta: dict) -> None:
        self.seen.update(key.split("/", 1)[0] for key in meta["keys"])
        self.skipped.update(meta["skipped"])

    def state_dict(self) -> dict:
        return {"seen": dict(self.seen), "skipped": dict(self.skipped)}

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


def train(recipe: Recipe, resume: bool = True) -> dict | None:
    """Train one stage; returns the final record (also written to `done.json`), or None if stopped by a signal.

    It resumes from the stage's checkpoint if its output directory holds one
    (unimodal/train/resume.py); `resume=False` starts over, the earlier run moved aside.
    """
    guard = StepGuard(recipe.name, recipe.train.max_nonfinite_steps)  # first: a stop signal must not kill the rank
    init_distributed(recipe.train.collective_timeout_s)
    rank, world = dist.get_rank(), dist.get_world_size()
    resuming = agree(recipe, resume)  # then everything comes from the stage's own checkpoint
    out_dir = recipe.train.output_dir
    ckpt_dir = out_dir / "checkpoints"
    names = [d.name for d in recipe.data.datasets]

    torch.manual_seed(recipe.seed)  # identical initial weights on every rank
    tokenizer = MultimodalTokenizer(recipe.tokenizer, recipe.data.datasets)
    cfg = model_config(recipe, tokenizer.vocab_size, tokenizer.patch_dims)
    model = UnifiedModel(cfg)
    model.gather_pairs = any(ds.objective == CONTRASTIVE for ds in recipe.data.datasets)
    model.distill = DistillPlan.of(recipe.data.datasets)
    if recipe.init_from and not resuming:
        check_start(recipe, world, recipe.name)
        init_weights(model, cfg, Path(recipe.init_from))
    n_params = count_parameters(model)  # before ZeRO-3 partitions the parameters
    n_trainable = freeze_all_but(model, recipe.train.trainable)
    engine = build_engine(recipe, model)
    if recipe.carry == "optimizer" and not resuming:
        load_optimizer_state(engine, Path(recipe.init_from))
    dtype = next(engine.module.parameters()).dtype
    device = torch.device(engine.device)
    loader = build_train_loader(
        recipe, rank, world, engine.gradient_accumulation_steps(), guard.stopping, pin_memory=device.type == "cuda"
    )
    feed = DeviceFeed(device, dtype)
    peak, peak_source = peak_flops(device, dtype)

    step, mine = 0, None  # mine: this rank's part of the checkpoint
    client_state = load_latest(engine, ckpt_dir) if resuming else None
    if client_state is not None:
        step, guard.skipped = int(client_state["step"]), int(client_state["skipped_nonfinite"])
        if len(client_state["ranks"]) != world:
            raise ValueError(f"{ckpt_dir}: saved by {len(client_state['ranks'])} ranks, resumed on {world}")
        mine = client_state["ranks"][rank]
        loader.load_state_dict(mine["loader"])
    counts = DataCounts(recipe, mine["data"] if mine else None)
    balancer = Balancer(recipe, loader, step, mine["balance"] if mine else None, device)
    if rank == 0:
        remove_partial(ckpt_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
        print(
            f"[unimodal] {recipe.name}: {n_params / 1e6:.2f}M parameters "
            f"({n_trainable:,} trainable, {n_trainable / n_params:.2%}), "
            f"world size {world}, ZeRO stage {engine.zero_optimization_stage()}, "
            f"{f'resuming at step {step}' if resuming else 'from step 0, ' + describe(recipe)}; MFU against {peak_source}",
            flush=True,
        )
    logger = MetricsLogger(recipe, step, enabled=rank == 0)
    sample_log = SampleLog(out_dir, rank, step, recipe.logging.sample_log)
    window = Window(len(names), device)
    batches = iter(loader)  # draws the workers' seeds from torch's generator: before its state is restored
    if mine:
        window.load_state_dict(mine["window"])
        set_rng_state(mine["rng"])
    started, start_step = time.perf_counter(), step
    tokens_per_s = []
    while step < recipe.train.steps and not guard.stop:
        trained = 0
        while trained < engine.gradient_accumulation_steps():
            t0 = time.perf_counter()
            host = next(batches)
            meta = host.pop("meta")
            counts.add(meta)
            batch = feed(host)
            wait = time.perf_counter() - t0
            out = engine(batch)
            skip = guard.skip(out["loss"], step + 1)
            sample_log.add(step + 1, meta, trained=not skip)
            if skip:
                continue
            engine.backward(out["loss"])
            engine.step()
            window.add(out, batch, host, wait, batch_train_flops(cfg, host))
            balancer.add(batch["dataset"], out["sample_loss"])
            trained += 1
        step += 1
        balancer.step(step)
        logger.advance()
        if step % recipe.logging.every == 0 or step == recipe.train.steps:
            record = window.record(step, engine.get_lr()[0], names, world, peak) | counts.record()
            record |= balancer.record(record)
            record["peak_memory_mib"] = peak_memory_mib(device)[0]  # rank 0's, the logging rank
            record["skipped_nonfinite"] = guard.skipped
            if cfg.compile:  # torch.compile's graphs so far: flat once the batch shapes stop recompiling
                record["compiled_graphs"] = compiled_graphs()
            tokens_per_s.append(record["tokens_per_s"])
            logger.log(record)
        if step % recipe.train.checkpoint_every == 0 or step == recipe.train.steps or guard.stop:
            # DeepSpeed writes client_state from rank 0 only: it carries every rank's part
            ranks = [None] * world
            part = {
                "loader": loader.state_dict(),
                "data": counts.state_dict(),
                "balance": balancer.state_dict(),
                "window": window.state_dict(),
                "rng": rng_state(),
            }
            dist.all_gather_object(ranks, part)
            sample_log.flush()
            client = {"step": step, "skipped_nonfinite": guard.skipped, "ranks": ranks}
            save_checkpoint(engine, ckpt_dir, step, client, recipe.train.keep_checkpoints)
    if step < recipe.train.steps:
        if rank == 0:
            print(
                f"[unimodal] {recipe.name}: stopped by a signal at step {step}, checkpoint saved; "
                "run it again to go on",
                flush=True,
            )
        logger.close()
        sample_log.close()
        return None

    state = full_state_dict(engine)
    done = {
        "stage": recipe.name,
        "steps": step,
        **layout(recipe, world),  # world_size, zero_stage, precision: what carry: optimizer must match
        "tokens_per_s": sum(tokens_per_s) / max(1, len(tokens_per_s)),
        "seconds": time.perf_counter() - started,
        "steps_this_run": step - start_step,
        "parameters": n_params,
        "trainable_parameters": n_trainable,
    }
    done["peak_memory_mib"], done["peak_memory_of"] = peak_memory_mib(device)
    if rank == 0:
        save_weights(out_dir, state, cfg)
        (out_dir / DONE).write_text(json.dumps(done, indent=2))
    logger.close()
    sample_log.close()
    return done
